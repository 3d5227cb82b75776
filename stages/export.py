"""DVC stage export: dataset shards, metadata.parquet, the independent judge's verdict, dataset card, manifest."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.config import Params
from pipeline.export.run import run_export
from pipeline.stage import add_weights_args, run_stage, stage_parser, weights_store

log = logging.getLogger("stages.export")


def main(args: argparse.Namespace, params: Params) -> None:
    manifest = run_export(params, Path(args.candidates), Path(args.selection), Path(args.out), weights_store(args))
    log.info("export: %s -> %s", manifest["counts"], args.out)


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--candidates", default="data/candidates")
    p.add_argument("--selection", default="data/curation/selection.parquet")
    p.add_argument("--out", default="data/dataset")
    add_weights_args(p)
    return p


if __name__ == "__main__":
    run_stage(main, parser())
