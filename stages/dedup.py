"""DVC stage dedup: within-identity consistency, then one identity per cluster of look-alikes."""

from __future__ import annotations

import argparse
import logging

from pipeline.cli import run_stage, stage_parser
from pipeline.config import Params
from pipeline.curation import read_curation, reason_counts, write_curation
from pipeline.identities.dedup import DEDUP_COLUMNS, run_dedup
from pipeline.shards.candidates import read_candidates

log = logging.getLogger("stages.dedup")


def main(args: argparse.Namespace, params: Params) -> None:
    candidates = read_candidates(args.candidates, DEDUP_COLUMNS).to_pandas()
    result = run_dedup(read_curation(args.filter), candidates, params.dedup)
    write_curation(result, args.out)
    log.info("dedup: kept %d samples of %d identities; rejected %s", result["keep"].sum(),
             result.loc[result["keep"], "identity"].nunique(), reason_counts(result))  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--candidates", default="data/candidates")
    p.add_argument("--filter", default="data/curation/filter.parquet")
    p.add_argument("--out", default="data/curation/dedup.parquet")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
