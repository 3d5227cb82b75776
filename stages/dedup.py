"""DVC stage dedup: within-identity consistency, then a maximal set of identities with no look-alike kept."""

from __future__ import annotations

import argparse
import logging

from pipeline.config import Params
from pipeline.curation.capacity import block_size, capacity_curve
from pipeline.curation.dedup import run_dedup
from pipeline.runtime.device import resolve_devices
from pipeline.shards.io import write_bytes_atomic
from pipeline.stage import run_stage, stage_parser

log = logging.getLogger("stages.dedup")


def main(args: argparse.Namespace, params: Params) -> None:
    device = resolve_devices(params.runtime)[0]
    writer, state = run_dedup(args.candidates, args.filter, params.dedup, args.out, device)
    ids, duplicate, real = state.decided
    log.info("dedup: %s; %d of %d identities kept", writer.summary(), int((~duplicate & ~real).sum()), len(ids))
    count = params.identities.count
    curve = capacity_curve(ids, state.pairs, ~duplicate, block_size(count, params.identities.shard_size), count)
    write_bytes_atomic(args.capacity, curve.to_csv(index=False).encode())


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--candidates", default="data/candidates")
    p.add_argument("--filter", default="data/curation/filter.parquet")
    p.add_argument("--out", default="data/curation/dedup.parquet")
    p.add_argument("--capacity", default="reports/plots/capacity.csv", help="identity capacity curve (dvc plot)")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
