"""Benchmark: candidates needed to meet a skewed identity-level target with `select` vs. `steer`.

On the smoke preset (true attributes known), both modes generate the same identity ids; after
the real filter and dedup, the smallest prefix of identities from which `balance.select` meets the
target is found. Candidates needed = that prefix x candidates per identity; the ratio is the figure.

For a target share p of a class whose natural rate is q, select needs at least p/q x as many
identities as the dataset has, steer at least 1x: p/q bounds the ratio any steering can reach
(1.6x for 80/20 from 50/50), before curation losses.

    uv run python bench/balance.py                         # smoke_hair light 0.8 (natural ~0.55)
    uv run python bench/balance.py --attribute smoke_skin --cls light --share 0.8 --dataset 120 --max-identities 600
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, not bench/, first on the path: bench/pipeline.py would shadow the `pipeline` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import logging
import os
import tempfile
import time

from pipeline.calibrate import run_calibrate
from pipeline.config import CONFIGS_DIR, _read_yaml, deep_merge, validate_params
from pipeline.curation.balance import BalanceError, select
from pipeline.curation.dedup import DEDUP_COLUMNS, dedup_frame
from pipeline.curation.filter import FILTER_COLUMNS, apply_filter
from pipeline.faces.attributes import attribute_catalog, balance_targets
from pipeline.generate.driver import run_generate
from pipeline.plugins import check_plugins
from pipeline.shards.candidates import read_candidates


def curated(params, out: Path, calibration: Path | None):
    run_generate(params, out, calibration=calibration)
    cand = read_candidates(out).to_pandas()
    filtered = apply_filter(cand[FILTER_COLUMNS], params.filter)
    dedup = dedup_frame(filtered, cand[DEDUP_COLUMNS], params.dedup)
    attrs = [c for c in cand.columns if c.startswith("attr_")]
    return dedup.merge(cand[["key", *attrs]], on="key"), cand


def needed(curation, params, step: int) -> int | None:
    """Smallest identity prefix (in steps) from which the targets are met, None if even all fall short."""
    catalog, targets = attribute_catalog(params.attributes), balance_targets(params.attributes, params.balance)
    total = int(curation["identity"].max()) + 1
    for n in range(params.dataset.identities, total + 1, step):
        try:
            select(curation[curation["identity"] < n], params.dataset, params.balance, targets, catalog)
            return n
        except BalanceError:
            continue
    return None


def curated_share(curation, params, column: str, cls: str) -> tuple[int, float]:
    """Identities with enough kept samples after filter + dedup, and the share of `cls` among them."""
    kept = curation[curation["keep"]]
    counts = kept.groupby("identity").size()
    eligible = counts[counts >= params.dataset.images_per_identity].index
    labels = kept.drop_duplicates("identity").set_index("identity").loc[eligible, column]
    return len(eligible), float((labels == cls).mean()) if len(eligible) else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attribute", default="smoke_hair")
    p.add_argument("--cls", default="light")
    p.add_argument("--share", type=float, default=0.8)
    p.add_argument("--dataset", type=int, default=60, help="identities in the dataset")
    p.add_argument("--max-identities", type=int, default=360)
    p.add_argument("--step", type=int, default=4)
    p.add_argument("--modes", default="select,steer", help="comma-separated: select, steer")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("SYNTHFACES_NO_PROGRESS", "1")
    raw = {
        "identities": {"count": args.max_identities, "images_per_identity": 3, "oversample": 1.34, "shard_size": 60},
        "dataset": {"identities": args.dataset, "images_per_identity": 3},
        "balance": {"targets": {args.attribute: {args.cls: args.share}}, "tolerance": 0.02, "steer_chunk": 8},
    }
    smoke = deep_merge(_read_yaml(CONFIGS_DIR / "smoke.yaml", "smoke"), raw) | {"preset": "smoke"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            params = check_plugins(validate_params(deep_merge(smoke, {"balance": {"mode": mode}})))
            start = time.perf_counter()
            calibration = Path(tmp) / f"calib-{mode}"
            run_calibrate(params, calibration)
            cur, cand = curated(params, Path(tmp) / mode, calibration)
            n = needed(cur, params, args.step)
            natural = (cand.drop_duplicates("identity")[f"attr_{args.attribute}"] == args.cls).mean()
            per = params.identities.variants_per_identity
            results[mode] = n * per if n else None
            eligible, share = curated_share(cur, params, f"attr_{args.attribute}", args.cls)
            print(f"{mode:6s}: {args.attribute}={args.cls} in candidates {natural:.2f}, among the {eligible} "
                  f"curated identities {share:.2f}; target {args.share:.2f} of {args.dataset} identities met from "
                  f"{n} identities = {results[mode]} candidates ({time.perf_counter() - start:.0f} s)")  # fmt: skip
    if len(results) == 2 and all(results.values()):
        print(f"select / steer candidates needed: {results['select'] / results['steer']:.2f}x")
    else:
        print("a mode fell short of the target within --max-identities; raise it")


if __name__ == "__main__":
    main()
