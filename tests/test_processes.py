"""A killed run leaves no process behind: export's pool workers (and with them multiprocessing's resource
tracker) die with the export's main process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import EXPORTED, REPO, small_params

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc's parent links)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killing_export_leaves_no_process_of_the_run(exported_dataset: Path, tmp_path: Path) -> None:
    root = exported_dataset.parent
    params = small_params(**{**EXPORTED, "export": {**EXPORTED["export"], "workers": 2}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    cmd = [
        sys.executable,
        "-m",
        "stages.export",
        "--params",
        str(tmp_path / "params.yaml"),
        "--candidates",
        str(root / "candidates"),
        "--selection",
        str(root / "selection.parquet"),
        "--out",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "SYNTHFACES_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    children: set[int] = set()
    deadline = time.monotonic() + 120
    while len(children) < 2 and proc.poll() is None and time.monotonic() < deadline:
        children = descendants(proc.pid)
        time.sleep(0.05)
    assert len(children) >= 2, "the export's pool never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in children if alive(p)], "processes of the killed export are still running"
