"""DVC stage balance: choose the dataset's identities and samples to meet balance.targets; assign class ids."""

from __future__ import annotations

import argparse
import logging

from pipeline.config import Params
from pipeline.curation.balance import run_balance, target_bins
from pipeline.errors import PipelineError
from pipeline.faces.attributes import attribute_catalog, balance_targets
from pipeline.shards.candidates import candidate_columns
from pipeline.stage import run_stage, stage_parser

log = logging.getLogger("stages.balance")


def main(args: argparse.Namespace, params: Params) -> None:
    targets = balance_targets(params.attributes, params.balance)
    missing = [f"attr_{a}" for a in targets if f"attr_{a}" not in candidate_columns(args.candidates)]
    if missing:
        raise PipelineError(f"balance.targets: the candidates have no {', '.join(missing)} (run dvc repro)")
    bins = target_bins(targets, attribute_catalog(params.attributes))
    writer, plan = run_balance(args.candidates, args.dedup, params.dataset, params.balance, bins, args.out)
    log.info("balance: %d samples of %d classes selected", writer.kept, len(plan.chosen))
    for b in bins:
        total = params.dataset.identities * (1 if b.level == "identity" else params.dataset.images_per_identity)
        log.info("balance: %-24s target %.3f achieved %.3f", b.name, b.share, plan.counts[b.name] / total)


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--dedup", default="data/curation/dedup.parquet")
    p.add_argument("--candidates", default="data/candidates", help="candidate shards (attribute columns)")
    p.add_argument("--out", default="data/curation/selection.parquet")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
