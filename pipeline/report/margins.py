"""Margin sheets: per filter rule, the candidates just inside and just past its threshold (or, while the rule is
off, a quantile of its score), which is what a person looks at to set the threshold."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import FilterParams
from pipeline.curation.filter import ARTIFACT_REASONS, artifact_threshold
from pipeline.report.contact_sheet import contact_sheet, sheet_bytes
from pipeline.shards.candidates import candidate_images
from pipeline.shards.io import write_bytes_atomic

#: While a rule is off, the sheet sits at this quantile of its score: the 2% a rule would reject first.
OFF_QUANTILE = 0.02


@dataclass(frozen=True)
class Margin:
    """A thresholded rule: the reason code, the score it reads, its threshold, whether it rejects below it, and
    whether it thresholds the score's magnitude (roll: either way)."""

    reason: str
    column: str
    threshold: Callable[[FilterParams], float | None]
    rejects_below: bool
    magnitude: bool = False

    def score(self, frame: pd.DataFrame) -> pd.Series:
        return frame[self.column].abs() if self.magnitude else frame[self.column]


MARGINS: tuple[Margin, ...] = (
    Margin("low_det_prob", "det_prob", lambda p: p.min_det_prob, True),
    Margin("small_face", "q_face_fraction", lambda p: p.min_face_fraction, True),
    Margin("roll", "q_roll", lambda p: p.max_roll_deg, False, magnitude=True),
    Margin("misaligned", "q_align_residual", lambda p: p.max_align_residual, False),
    Margin("blurry", "q_sharpness", lambda p: p.min_sharpness or None, True),
    Margin("low_quality", "q_serfiq", lambda p: p.min_serfiq or None, True),
    Margin("unrealistic", "q_disc", lambda p: p.min_disc_logit, True),
    *(Margin(reason, column, lambda p, c=column: artifact_threshold(p, c), False)
      for column, (reason, _) in ARTIFACT_REASONS.items()),
)  # fmt: skip


def margin_keys(scores: pd.Series, threshold: float, rejects_below: bool, per_side: int) -> tuple[list, list]:
    """Keys of the `per_side` candidates nearest the threshold on the kept side, then on the rejected side."""
    kept = scores[scores >= threshold] if rejects_below else scores[scores <= threshold]
    rejected = scores[scores < threshold] if rejects_below else scores[scores > threshold]
    near_kept = (kept - threshold).abs().sort_values(kind="stable").index[:per_side]
    near_rejected = (rejected - threshold).abs().sort_values(kind="stable").index[:per_side]
    return list(near_kept), list(near_rejected)


def write_margin_sheets(scores: pd.DataFrame, params: FilterParams, candidates: Path, folder: Path,
                        per_side: int = 8) -> dict[str, dict]:  # fmt: skip
    """reports/margins/<reason>.jpg for every rule whose score the candidates carry: a row just kept, a row just
    rejected. Returns per reason the threshold used and whether it is the rule's (`on`) or a quantile. The images
    of every sheet are read in one pass over the shards that hold them."""
    faces = scores[scores["det_prob"] > 0].set_index("key")
    chosen: dict[str, tuple[Margin, float, bool, list, list]] = {}
    for m in MARGINS:
        if m.column not in faces or not np.isfinite(faces[m.column]).any():
            continue
        values = m.score(faces)[lambda s: np.isfinite(s)]
        threshold = m.threshold(params)
        on = threshold is not None
        if not on:
            threshold = float(values.quantile(OFF_QUANTILE if m.rejects_below else 1 - OFF_QUANTILE))
        chosen[m.reason] = (m, threshold, on, *margin_keys(values, threshold, m.rejects_below, per_side))
    images = candidate_images(candidates, {k for *_, kept, rejected in chosen.values() for k in kept + rejected})
    for reason, (m, threshold, _, kept, rejected) in chosen.items():
        side = ("<", ">=") if m.rejects_below else (">", "<=")
        rows = [
            (f"inside {side[1]} {threshold:.3g}", [images[k] for k in kept if k in images]),
            (f"past {side[0]} {threshold:.3g}", [images[k] for k in rejected if k in images]),
        ]
        write_bytes_atomic(folder / f"{reason}.jpg", sheet_bytes(contact_sheet(rows, columns=per_side)))
    return {reason: {"column": m.column, "threshold": t, "on": on} for reason, (m, t, on, *_) in chosen.items()}
