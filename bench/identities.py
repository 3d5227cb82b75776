"""Benchmark: what a recognition model could learn from the identities, for the style-mixing baseline vs.
identity-preserving edits (one axis, or the preset's yaw, pitch and smile held off the identity layer) and
separation by construction, on one generator and one run.

For each configuration the real calibrate, generate, filter and dedup run on the preset (smoke by default);
then, over the samples dedup keeps of the identities that keep enough of them:
- spread inside identities per axis (yaw, pitch, smile): the pooled within-identity standard deviation of the
  smoke renderer's true value, against a uniform spread over the preset's edit range;
- identity stability: the share of variants whose skin tone or hair (the renderer's truth) differs from their
  identity's canonical image;
- drift / near-copy / duplicate-identity rejections, and the duplicate rate (identities dropped as look-alikes);
- genuine and impostor cosines of the kept samples with the curation embedder, and with the independent judge
  (dlib) on a seeded choice of kept identities: means and equal-error rates;
- generation cost: seconds and renders per candidate (tries and shrinking steps render again) and per
  kept identity (one with at least dataset.images_per_identity samples after dedup).

    uv run python bench/identities.py                       # smoke: baseline, edit, edit+separation, mix+separation
    uv run python bench/identities.py --configs baseline,edit --judge-identities 30
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, not bench/, first on the path: bench/pipeline.py would shadow the `pipeline` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.calibrate import run_calibrate
from pipeline.config import load_params
from pipeline.curation.dedup import run_dedup
from pipeline.curation.filter import run_filter
from pipeline.generate.driver import run_generate
from pipeline.identities.variation import edit_scales
from pipeline.plugins import check_plugins
from pipeline.report.judge import JUDGES, judge_dataset, pair_scores
from pipeline.report.variation import variation_report
from pipeline.report.verification import verification_rates
from pipeline.shards.candidates import candidate_images

#: The smoke preset's edit ranges: what each axis's spread is compared with.
AXES = {"yaw": (-30.0, 30.0), "smoke_pitch": (-15.0, 15.0), "smoke_smile": (-0.4, 0.9)}
NONE = {"yaw": [], "smoke_pitch": [], "smoke_smile": []}
CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": {"variation": {"mix": True, "edits": NONE}},  # style mixing of layer 1
    "yaw": {"variation": {"edits": {**NONE, "yaw": [-30, 30]}, "preserve": []}},
    "preset": {},
    "preset+separation": {"identities": {"separation": 0.95}},
}


def candidates(folder: Path, columns: list[str]) -> pd.DataFrame:
    parts = [pq.read_table(p, columns=[c for c in columns if c in pq.read_schema(p).names]).to_pandas()
             for p in sorted(folder.glob("shard-*.parquet"))]  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def cosine_rates(embeddings: np.ndarray, identities: np.ndarray) -> dict[str, float]:
    genuine, impostor, _, _ = pair_scores(embeddings, identities)
    return {
        "genuine": float(genuine.mean()),
        "impostor": float(impostor.mean()),
        **verification_rates(genuine, impostor),
    }


def run(name: str, overrides: dict[str, Any], preset: str, root: Path, judge_identities: int) -> dict[str, Any]:
    work = root / name.replace("+", "_")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump({"preset": preset, **overrides}))
    params = check_plugins(load_params(work / "params.yaml"))
    start = time.perf_counter()
    run_calibrate(params, work / "calibration")
    calibrate_s = time.perf_counter() - start
    start = time.perf_counter()
    run_generate(params, work / "candidates", calibration=work / "calibration")
    generate_s = time.perf_counter() - start
    run_filter(work / "candidates", params.filter, work / "filter.parquet")
    run_dedup(work / "candidates", work / "filter.parquet", params.dedup, work / "dedup.parquet")
    truth = ["attr_smoke_yaw", "attr_smoke_pitch", "attr_smoke_smile", "attr_smoke_skin", "attr_smoke_hair"]
    cols = ["key", "identity", "variant", *truth, "embedding", "box", "edit_scale", "sep_try"]
    cand = candidates(work / "candidates", cols)
    dedup = pq.read_table(work / "dedup.parquet", columns=["key", "keep", "reason"]).to_pandas()
    cand = cand.merge(dedup, on="key")
    reasons = cand[~cand["keep"]]["reason"].value_counts()
    kept = cand[cand["keep"]]
    per_identity = kept.groupby("identity").size()
    kept_ids = per_identity[per_identity >= params.dataset.images_per_identity].index.to_numpy()
    duplicates = cand[cand["reason"] == "duplicate_identity"]["identity"].nunique()
    renders = len(cand)
    if "edit_scale" in cand:
        grid = edit_scales(params.variation.edit_steps)
        steps = cand.loc[cand["variant"] > 0, "edit_scale"].map({s: k for k, s in enumerate(grid)})
        renders += int(steps.sum())  # a variant kept at grid step k was rendered k times before
    if "sep_try" in cand:
        renders += int(cand.loc[cand["variant"] == 0, "sep_try"].sum())  # at least the failed tries
    judged = kept[kept["identity"].isin(kept_ids)]
    axes = {a: f"attr_smoke_{a}" if not a.startswith("smoke_") else f"attr_{a}" for a in AXES}
    spread = variation_report(judged, cand[cand["variant"] == 0], AXES, ["smoke_skin", "smoke_hair"], axes)
    emb = np.stack(kept[kept["identity"].isin(kept_ids)]["embedding"].to_numpy()).astype(np.float32)
    curation = cosine_rates(emb, kept[kept["identity"].isin(kept_ids)]["identity"].to_numpy())
    chosen = np.sort(np.random.default_rng(0).choice(kept_ids, min(judge_identities, len(kept_ids)), replace=False))
    sample = kept[kept["identity"].isin(chosen)]
    table = pa.table({"key": sample["key"].tolist(), "class": sample["identity"].to_numpy(),
                      "box": [list(b) for b in sample["box"]]})  # fmt: skip
    verdict = judge_dataset(
        JUDGES.create("dlib_resnet"), table, candidate_images(work / "candidates", set(table["key"].to_pylist()))
    )
    return {
        "config": name,
        "spread": {a: v["ratio"] for a, v in spread["axes"].items()},
        "differ": {a: v["differ_from_canonical"] for a, v in spread["identity_attributes"].items()},
        "drift": int(reasons.get("drift", 0)),
        "near_copy": int(reasons.get("near_copy", 0)),
        "duplicate_identity": int(reasons.get("duplicate_identity", 0)),
        "duplicate_rate": duplicates / cand["identity"].nunique(),
        "kept_identities": len(kept_ids),
        "curation": curation,
        "judge": verdict,
        "calibrate_s": calibrate_s,
        "generate_s": generate_s,
        "renders_per_candidate": renders / len(cand),
        "s_per_kept_identity": generate_s / max(len(kept_ids), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--judge-identities", type=int, default=20)
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("SYNTHFACES_NO_PROGRESS", "1")
    root = args.work or Path(tempfile.mkdtemp(prefix="identities-"))
    print(f"preset {args.preset}; spread = pooled within-identity sd / a uniform spread's over {AXES}")
    header = (f"{'config':18s} {'yaw':>5s} {'pitch':>5s} {'smile':>5s} {'skin%':>6s} {'hair%':>6s} {'drift':>6s} "
              f"{'near':>5s} {'dup':>5s} {'kept ids':>8s} {'emb EER':>7s} {'judge EER':>9s} {'renders':>7s} "
              f"{'s/kept id':>9s}")  # fmt: skip
    print(header)
    for name in args.configs.split(","):
        r = run(name, CONFIGS[name], args.preset, root, args.judge_identities)
        sp, d, c, j = r["spread"], r["differ"], r["curation"], r["judge"]
        print(f"{name:18s} {sp['yaw']:5.2f} {sp['smoke_pitch']:5.2f} {sp['smoke_smile']:5.2f} "
              f"{100 * d['smoke_skin']:5.1f}% {100 * d['smoke_hair']:5.1f}% {r['drift']:6d} {r['near_copy']:5d} "
              f"{r['duplicate_identity']:5d} {r['kept_identities']:8d} {c['eer']:7.3f} "
              f"{j.get('eer', float('nan')):9.3f} {r['renders_per_candidate']:7.2f} {r['s_per_kept_identity']:9.3f}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
