"""Stage entry points: user errors end in one line and an exit status, never a traceback."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from pipeline.shards.io import atomic_path
from pipeline.stage import run_stage, stage_parser

from .conftest import REPO


def run_main(monkeypatch: pytest.MonkeyPatch, main) -> None:
    monkeypatch.setattr("sys.argv", ["stage", "--params", str(REPO / "params.yaml")])
    run_stage(main, stage_parser("test"))


def test_out_of_disk_is_one_line_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    target = tmp_path / "shard-000000.parquet"

    def main(args, params) -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(SystemExit) as exit_info:
        run_main(monkeypatch, main)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: out of disk space writing") and "run again" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_are_not_disguised(monkeypatch: pytest.MonkeyPatch) -> None:
    def main(args, params) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        run_main(monkeypatch, main)


def test_pipeline_errors_exit_1_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from pipeline.errors import PipelineError

    def main(args, params) -> None:
        raise PipelineError("dataset.identities: need 50 identities, only 3 available")

    with pytest.raises(SystemExit) as exit_info:
        run_main(monkeypatch, main)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: dataset.identities: need 50 identities, only 3 available\n"


def test_out_of_gpu_memory_says_what_to_do(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import torch

    def main(args, params) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(SystemExit) as exit_info:
        run_main(monkeypatch, main)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of GPU memory") and "lower runtime.batch_size" in err and "kept" in err
