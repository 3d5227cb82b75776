"""DVC stage calibrate: W-space attribute directions (InterFaceGAN) and the steering plan for generate."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.calibrate import run_calibrate
from pipeline.config import Params
from pipeline.stage import add_weights_args, run_stage, stage_parser, weights_store

log = logging.getLogger("stages.calibrate")


def main(args: argparse.Namespace, params: Params) -> None:
    summary = run_calibrate(params, Path(args.out), weights_store(args), Path(args.plot), Path(args.layers_plot))
    log.info(
        "calibrate: %d directions from %d samples; balance mode %s",
        len(summary["directions"]),
        summary["samples"],
        summary["steer"]["mode"],
    )


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--out", default="data/calibration", help="folder for directions.json and steer.json")
    p.add_argument("--plot", default="reports/plots/calibration.csv", help="held-out accuracy per direction")
    p.add_argument("--layers-plot", default="reports/plots/edit_layers.csv", help="each edit's effect per layer")
    add_weights_args(p)
    return p


if __name__ == "__main__":
    run_stage(main, parser())
