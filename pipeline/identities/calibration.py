"""The calibrate stage's output as files: W-space directions per attribute class, regressions of continuous
attributes (what edits move along) and the steer plan. Calibrate writes them; generate reads them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.faces.attributes import Direction
from pipeline.identities.variation import Regression
from pipeline.shards.io import write_json_atomic

DIRECTIONS = "directions.json"
STEER_PLAN = "steer.json"


def directions_to_json(directions: list[Direction]) -> list[dict[str, Any]]:
    return [
        {"attribute": d.attribute, "class": d.cls, "normal": [round(float(x), 7) for x in d.normal],
         "bias": round(d.bias, 7), "accuracy": round(d.accuracy, 6)}
        for d in directions
    ]  # fmt: skip


def _direction(d: dict[str, Any]) -> Direction:
    return Direction(d["attribute"], d["class"], np.asarray(d["normal"], np.float64), float(d["bias"]), d["accuracy"])


@dataclass(frozen=True)
class Calibration:
    """What generate reads from the calibrate stage's folder (empty when there is none)."""

    directions: list[Direction] = field(default_factory=list)
    regressions: dict[str, Regression] = field(default_factory=dict)
    steer_plan: dict[str, Any] | None = None  # None unless the plan steers

    @classmethod
    def load(cls, folder: Path | None) -> Calibration:
        data = read_directions(folder)
        steer = folder / STEER_PLAN if folder else None
        plan = json.loads(steer.read_text()) if steer is not None and steer.is_file() else None
        return cls(
            [_direction(d) for d in data.get("directions", [])],
            {r["attribute"]: Regression.from_json(r) for r in data.get("regressions", [])},
            plan if plan and plan.get("mode") == "steer" else None,
        )

    def fingerprint_json(self, edited: list[str]) -> str:
        """What of it shapes candidate bytes: the steer plan, every direction, the edited regressions."""
        steering = [
            self.steer_plan,
            directions_to_json(self.directions),
            [self.regressions[a].to_json() for a in sorted(edited)],
        ]
        return json.dumps(steering, sort_keys=True)


def read_directions(folder: Path | None) -> dict[str, Any]:
    """The directions file's content ({} when the folder or file is absent)."""
    path = folder / DIRECTIONS if folder else None
    if path is None or not path.is_file():
        return {}
    return json.loads(path.read_text())


def write_directions(
    out_dir: Path,
    fingerprint: str,
    directions: list[Direction],
    rows: list[dict[str, Any]],
    samples: int,
    regressions: list[Regression] | None = None,
    edit_layers: list[dict[str, Any]] | None = None,
) -> None:
    write_json_atomic(
        out_dir / DIRECTIONS,
        {
            "fingerprint": fingerprint,
            "samples": samples,
            "fits": rows,
            "directions": directions_to_json(directions),
            "regressions": [r.to_json() for r in regressions or []],
            "edit_layers": [
                {k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in edit_layers or []
            ],
        },
    )
