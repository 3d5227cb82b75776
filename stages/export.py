"""DVC stage export: dataset shards, metadata.parquet, the independent judge's verdict, dataset card, manifest."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.cli import run_stage, stage_parser
from pipeline.config import Params
from pipeline.export.run import run_export

log = logging.getLogger("stages.export")


def main(args: argparse.Namespace, params: Params) -> None:
    manifest = run_export(
        params, Path(args.candidates), Path(args.selection), Path(args.out), Path(args.weights), Path(args.lock)
    )
    log.info("export: %s -> %s", manifest["counts"], args.out)


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--candidates", default="data/candidates")
    p.add_argument("--selection", default="data/curation/selection.parquet")
    p.add_argument("--out", default="data/dataset")
    p.add_argument("--weights", default="weights", help="folder of fetched weights (the judge's files)")
    p.add_argument("--lock", default="weights.lock.json", help="sha256 lock of the weights")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
