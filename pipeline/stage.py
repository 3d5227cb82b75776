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
from pipeline.errors import ConfigError, InputError, PipelineError
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
    sys.exit(stage_status(main, parser, sys.argv[1:]))


def stage_status(
    main: Callable[[argparse.Namespace, Params], None], parser: argparse.ArgumentParser, argv: list[str]
) -> int:
    """`run_stage`'s exit status: 0, 2 for bad input (params, a file the user named), 1 for a failed run;
    errors are one `error:` line each on stderr. Genuine bugs still raise with their traceback."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        params = load_checked_params(args.params)
        main(args, params)
    except ConfigError as err:
        return _report(err.problems, EXIT_CONFIG)
    except InputError as err:
        return _report([str(err)], EXIT_CONFIG)
    except (FileNotFoundError, PipelineError) as err:
        return _report([str(err)], EXIT_FAILURE)
    except torch.OutOfMemoryError:
        return _report([f"out of GPU memory (runtime.batch_size: {params.runtime.batch_size}); lower "
                        "runtime.batch_size or use fewer/larger devices and run again: finished shards are kept"],
                       EXIT_FAILURE)  # fmt: skip
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        return _report([f"out of disk space{where}: free some space and run again; finished shards are kept and "
                        "no half-written file was left under a final name"], EXIT_FAILURE)  # fmt: skip
    return 0


def _report(lines: list[str], status: int) -> int:
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    return status
