"""DVC stage balance: choose the dataset's identities and samples; assign contiguous class ids."""

from __future__ import annotations

import argparse
import logging

from pipeline.balance import SELECTION_FIELDS, select
from pipeline.cli import run_stage, stage_parser
from pipeline.config import Params
from pipeline.curation import read_curation, write_curation

log = logging.getLogger("stages.balance")


def main(args: argparse.Namespace, params: Params) -> None:
    result = select(read_curation(args.dedup), params.dataset)
    write_curation(result, args.out, SELECTION_FIELDS)
    log.info(
        "balance: %d samples of %d classes selected",
        result["keep"].sum(),
        result.loc[result["keep"], "class"].nunique(),
    )


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--dedup", default="data/curation/dedup.parquet")
    p.add_argument("--out", default="data/curation/selection.parquet")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
