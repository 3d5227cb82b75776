"""DVC stage filter: keep/reject every candidate by the detector and quality rules, with reasons."""

from __future__ import annotations

import argparse
import logging

import pyarrow as pa

from pipeline.cli import run_stage, stage_parser
from pipeline.config import Params
from pipeline.curation import reason_counts, write_curation
from pipeline.filter import FILTER_COLUMNS, apply_filter
from pipeline.shards.candidates import read_candidates

log = logging.getLogger("stages.filter")


def main(args: argparse.Namespace, params: Params) -> None:
    candidates = read_candidates(args.candidates, FILTER_COLUMNS).to_pandas()
    result = apply_filter(candidates, params.filter)
    write_curation(result, args.out, [pa.field("reasons", pa.list_(pa.string()))])
    log.info("filter: kept %d of %d; rejected %s", result["keep"].sum(), len(result), reason_counts(result))


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--candidates", default="data/candidates")
    p.add_argument("--out", default="data/curation/filter.parquet")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
