"""Shared plumbing for stage entry points: logging, params loading, and one-line errors with exit codes."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.config import Params
from pipeline.errors import ConfigError, PipelineError
from pipeline.plugins import load_checked_params
from pipeline.runtime.progress import LOG_FORMAT
from pipeline.weights import DEFAULT_LOCK, WeightsStore

EXIT_CONFIG = 2
EXIT_FAILURE = 1


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (merged over configs/<preset>.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def add_weights_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="weights", help="folder of fetched weights")
    parser.add_argument("--lock", default=DEFAULT_LOCK, help="sha256 lock of the weights")


def weights_store(args: argparse.Namespace) -> WeightsStore:
    """The store `add_weights_args`' options name."""
    return WeightsStore(Path(args.weights), Path(args.lock))


def run_stage(main: Callable[[argparse.Namespace, Params], None], parser: argparse.ArgumentParser) -> None:
    """Parse args, validate params before any work, run; user errors exit with one line, no traceback."""
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        params = load_checked_params(args.params)
    except ConfigError as err:
        for line in err.problems:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        main(args, params)
    except ConfigError as err:
        for line in err.problems:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except (FileNotFoundError, PipelineError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    except torch.OutOfMemoryError:
        print(
            f"error: out of GPU memory (runtime.batch_size: {params.runtime.batch_size}); lower runtime.batch_size "
            "or use fewer/larger devices and run again: finished shards are kept",
            file=sys.stderr,
        )
        sys.exit(EXIT_FAILURE)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(
            f"error: out of disk space{where}: free some space and run again; finished shards are kept "
            "and no half-written file was left under a final name",
            file=sys.stderr,
        )
        sys.exit(EXIT_FAILURE)
