"""DVC stage filter: keep/reject every candidate by the detector and quality rules, with reasons."""

from __future__ import annotations

import argparse
import logging

from pipeline.config import Params
from pipeline.curation.filter import run_filter
from pipeline.stage import run_stage, stage_parser

log = logging.getLogger("stages.filter")


def main(args: argparse.Namespace, params: Params) -> None:
    log.info("filter: %s", run_filter(args.candidates, params.filter, args.out).summary())


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--candidates", default="data/candidates")
    p.add_argument("--out", default="data/curation/filter.parquet")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
