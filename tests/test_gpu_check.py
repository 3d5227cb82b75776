"""The prepared GPU acceptance script runs every step on the CPU at toy sizes, so it is ready when a GPU is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_check_dry_run_passes_every_step() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run"], cwd=REPO, capture_output=True,
        text=True, timeout=300, env={**os.environ, "SYNTHFACES_NO_PROGRESS": "1"},
    )  # fmt: skip
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "| step" not in line]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [line.split(" | ")[0].lstrip("| ") for line in table]
    assert steps == ["gpu tests", "dedup search", "device loop", "generate stage", "real-format repro", "smoke repro"]
    assert all(" | ok | " in line for line in table), table
