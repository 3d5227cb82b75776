"""DVC stage check: params.yaml and everything it names, before any work.

It depends on the whole params file (a misspelt section included) and every later stage follows it, so no
edit reaches a GPU unchecked: the schema and plug-in names (as every stage checks them), then the files and
locations they name and what the machine can hold (pipeline/checks.py). Its output never changes, so a
passing check re-runs nothing after it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.checks import check_inputs
from pipeline.config import Params
from pipeline.shards.io import write_bytes_atomic
from pipeline.stage import run_stage, stage_parser

PASSED = b"params.yaml and everything it names passed the checks of stages/check.py\n"


def main(args: argparse.Namespace, params: Params) -> None:
    check_inputs(params)
    write_bytes_atomic(Path(args.out), PASSED)


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--out", default="data/checked", help="written when every check passes (constant content)")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
