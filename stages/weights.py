"""DVC stage weights: fetch the generator and embedder weights the params need, sha256-locked."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.config import Params
from pipeline.shards.io import write_json_atomic
from pipeline.stage import run_stage, stage_parser
from pipeline.weights import WeightsLock, fetch_required

log = logging.getLogger("stages.weights")


def main(args: argparse.Namespace, params: Params) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fetched = fetch_required(params, out, WeightsLock(args.lock), base_url=args.base_url)
    write_json_atomic(out / "fetched.json", fetched)
    log.info("weights: %s", ", ".join(f"{k} ({v[:12]}…)" for k, v in fetched.items()) or "nothing needed")


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--out", default="weights", help="folder for the weights files")
    p.add_argument("--lock", default="weights.lock.json", help="sha256 lock file (written on first download)")
    p.add_argument("--base-url", default=None, help="fetch every file from this mirror instead of its registry URL")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
