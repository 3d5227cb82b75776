"""DVC stage generate: candidate shards (images, detections, embeddings, quality scores)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.config import Params
from pipeline.generate.driver import run_generate
from pipeline.stage import add_weights_args, run_stage, stage_parser, weights_store

log = logging.getLogger("stages.generate")


def main(args: argparse.Namespace, params: Params) -> None:
    manifest = run_generate(params, Path(args.out), weights_store(args), Path(args.calibration))
    log.info("generate: %d candidates in %d shards -> %s", manifest["rows"], len(manifest["shards"]), args.out)


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--out", default="data/candidates", help="candidate shard folder")
    add_weights_args(p)
    p.add_argument("--calibration", default="data/calibration", help="calibrate stage output (directions, steer)")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
