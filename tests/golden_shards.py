"""Golden candidate shards: tiny shards of every latent plan, rendered on the CPU, hashed column by column.

`tests/golden/generation.json` holds, per generation version, the hashes of each case's columns and of the
calibrate stage's fitted directions. tests/test_golden.py renders the cases again and compares: a change
that alters a byte of them must bump `GENERATION_VERSION` (candidates) or `CALIBRATION_VERSION` (directions)
in pipeline/generate/version.py and record the new golden beside the old ones:

    uv run python -m tests.golden_shards --record

Recording refuses to give an already recorded version other bytes, so the two always change together.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
GOLDEN = GOLDEN_DIR / "generation.json"
#: A random StyleGAN2 (32 px) in NVIDIA's pickle format, committed so its bytes never depend on torch's init.
STYLEGAN_PICKLE = GOLDEN_DIR / "stylegan2-random-32px.pkl"

_SMOKE: dict[str, Any] = {
    "generator": {"model": "smoke", "resolution": 64, "truncation_psi": 0.8},
    "identities": {"count": 4, "images_per_identity": 3, "oversample": 1.0, "shard_size": 4},
    "variation": {"mix": False, "mix_start": 1, "edits": {"yaw": [-30, 30]}, "min_identity_cosine": 0.6},
    "detect": {"min_face_size": 16},
    "embed": {"allow_random": True, "serfiq_passes": 4, "input_size": 112},
    "attributes": {"estimators": ["pose", "smoke"], "nose_depth": 0.9},
    "calibrate": {"samples": 40},
    "balance": {"mode": "steer", "targets": {"smoke_skin": {"light": 0.75}}, "steer_chunk": 2},
    "dataset": {"identities": 1, "images_per_identity": 1},
    "runtime": {"precision": "fp32", "batch_size": 5, "threads": 1, "encode_workers": 1},
}

#: name -> overrides of _SMOKE (sections replaced key by key). Together they run every latent plan:
#: steered + edited, steered + mixed, separated + mixed, separated + edited, plain (StyleGAN2, mixed).
CASES: dict[str, dict[str, Any]] = {
    "smoke-steer-edits": {},
    "smoke-steer-mix": {"variation": {"mix": True, "edits": {}}},
    "smoke-separation-mix": {
        "variation": {"mix": True, "edits": {}},
        "identities": {"separation": 0.85, "separation_tries": 3},
        "balance": {"mode": "select", "targets": {}},
    },
    "smoke-separation-edits": {
        "identities": {"separation": 0.85, "separation_tries": 3},
        "balance": {"mode": "select", "targets": {}},
    },
    "stylegan2-plain": {
        "generator": {"model": str(STYLEGAN_PICKLE), "resolution": None, "truncation_psi": 0.7},
        "identities": {"count": 2, "images_per_identity": 2},
        "variation": {"mix": True, "mix_start": 4, "edits": {}},
        "detect": {"min_face_size": 8},
        "attributes": {"estimators": ["pose"]},
        "balance": {"mode": "select", "targets": {}},
    },
}


def write_stylegan_pickle(path: Path = STYLEGAN_PICKLE) -> None:
    """How the committed pickle was made (seeded random init, NVIDIA's format, no discriminator)."""
    from pipeline.generators.stylegan2 import StyleGAN2Generator

    from .nvidia_format import write_network_pickle
    from .test_stylegan import SG2, randomised

    kwargs = dict(SG2, synthesis_kwargs={**SG2["synthesis_kwargs"], "channel_base": 512, "channel_max": 32})
    write_network_pickle(path, randomised(StyleGAN2Generator, kwargs), kwargs)


def case_params(name: str) -> Any:
    from pipeline.config import validate_params
    from pipeline.plugins import check_plugins

    raw = {k: dict(v) for k, v in _SMOKE.items()}
    for section, values in CASES[name].items():
        raw[section] = {**raw.get(section, {}), **values}
    return check_plugins(validate_params(raw))


def column_digests(path: Path) -> dict[str, str]:
    """sha256 of every column's values (exact: floats as Python floats, bytes as bytes)."""
    table = pq.read_table(path)
    return {
        name: hashlib.sha256(repr(table.column(name).to_pylist()).encode()).hexdigest() for name in table.column_names
    }


def calibration_digest(folder: Path) -> str:
    """sha256 of the fitted directions and regressions (the file's cache fingerprint left out)."""
    data = json.loads((folder / "directions.json").read_text())
    data.pop("fingerprint", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def render(work: Path) -> dict[str, Any]:
    """Calibrate, then generate every case into `work`; the digests to compare with the golden. Cases that
    edit or steer read the calibration of their own params (fitted once: only the steer plan differs)."""
    from pipeline.calibrate import run_calibrate
    from pipeline.generate.driver import run_generate
    from pipeline.weights import WeightsStore

    torch.set_num_threads(1)
    weights = WeightsStore(work / "weights", work / "weights.lock.json")
    out: dict[str, Any] = {"cases": {}, "cpu": torch.backends.cpu.get_cpu_capability()}
    for name in CASES:
        params = case_params(name)
        calibration = None
        if params.variation.edits or params.balance.mode == "steer":
            calibration = work / "calibration"
            run_calibrate(params, calibration, weights)
            out["calibration"] = calibration_digest(calibration)
        folder = work / name
        run_generate(params, folder, weights, calibration)
        out["cases"][name] = {s.stem: column_digests(s) for s in sorted(folder.glob("shard-*.parquet"))}
    return out


def differences(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """What differs, one line each: the calibration, or a case's shard and the columns that changed."""
    lines = []
    if expected["calibration"] != got["calibration"]:
        lines.append("calibration: fitted directions differ")
    for case, shards in expected["cases"].items():
        for shard, columns in shards.items():
            mine = got["cases"].get(case, {}).get(shard, {})
            changed = sorted(c for c in set(columns) | set(mine) if columns.get(c) != mine.get(c))
            if changed:
                lines.append(f"{case}/{shard}: {', '.join(changed)}")
    return lines


def main(argv: list[str] | None = None) -> None:
    from pipeline.generate.version import CALIBRATION_VERSION, GENERATION_VERSION

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help="record the golden of the current versions")
    args = parser.parse_args(argv)
    key = f"generation-{GENERATION_VERSION}/calibration-{CALIBRATION_VERSION}"
    with tempfile.TemporaryDirectory() as tmp:
        got = render(Path(tmp))
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if key in golden and differences(golden[key], got):
        sys.exit(f"{key} is recorded with other bytes ({'; '.join(differences(golden[key], got))}): bump the version")
    if args.record:
        golden[key] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        print(f"recorded {key} in {GOLDEN}")
    else:
        print(json.dumps(got, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
