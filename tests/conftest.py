"""Shared fixtures: small params, a cached face pass, and the gpu marker's skip."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.config import Params, validate_params
from pipeline.plugins import check_plugins

os.environ.setdefault("SYNTHFACES_NO_PROGRESS", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parent.parent
_STATUS = pytest.StashKey[set[str] | None]()


def small_params(**overrides: Any) -> Params:
    """A tiny smoke configuration: 2 shards of 3 identities x 4 variants, CPU, fp32."""
    raw: dict[str, Any] = {
        "generator": {"model": "smoke", "resolution": 96, "truncation_psi": 0.8},
        "identities": {"count": 6, "images_per_identity": 4, "oversample": 1.0, "shard_size": 3},
        "variation": {"mix_start": 1},
        "detect": {"min_face_size": 20},
        "embed": {"allow_random": True},
        "attributes": {"estimators": ["pose", "smoke"], "nose_depth": 0.9},
        "dataset": {"identities": 2, "images_per_identity": 2},
        "runtime": {"precision": "fp32", "batch_size": 8},
    }
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    if raw["generator"]["model"] != "smoke" and "attributes" not in overrides:
        raw["attributes"] = {"estimators": ["pose"]}  # the smoke truth exists only for the smoke generator
    return check_plugins(validate_params(raw))


@pytest.fixture(scope="session")
def face_pass():
    from pipeline.generate import FacePass

    return FacePass(small_params(), torch.device("cpu"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


#: The exported_dataset fixture's overrides of small_params (its files sit beside the dataset folder).
EXPORTED: dict[str, Any] = {
    "dedup": {"max_identity_similarity": 0.9999, "min_sample_consistency": -1.0, "max_sample_similarity": 1.0},
    "filter": {"min_det_prob": 0.5, "min_face_fraction": 0.0},
    "dataset": {"identities": 3, "images_per_identity": 2},
    "export": {"samples_per_shard": 4, "formats": ["webdataset", "parquet", "recordio", "imagefolder", "lmdb"]},
}


@pytest.fixture(scope="session")
def exported_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dataset built through the library stages: 6 identities x 4 candidates -> 3 classes x 2."""
    from pipeline.curation.balance import run_balance
    from pipeline.curation.dedup import run_dedup
    from pipeline.curation.filter import run_filter
    from pipeline.export.run import run_export
    from pipeline.generate import run_generate

    root = tmp_path_factory.mktemp("dataset")
    params = small_params(**EXPORTED)
    cand = root / "candidates"
    run_generate(params, cand)
    run_filter(cand, params.filter, root / "filter.parquet")
    run_dedup(cand, root / "filter.parquet", params.dedup, root / "dedup.parquet")
    run_balance(cand, root / "dedup.parquet", params.dataset, params.balance, [], root / "selection.parquet")
    run_export(params, cand, root / "selection.parquet", root / "dataset")
    return root / "dataset"


def _git_status() -> set[str] | None:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return None
    return set(out.stdout.splitlines()) if out.returncode == 0 else None


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STATUS] = _git_status()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite must leave the checkout as it found it (no lock entries for test pickles, no stray files)."""
    before, after = session.config.stash.get(_STATUS, None), _git_status()
    if before is None or after is None or after <= before:
        return
    new = sorted(after - before)
    session.config.get_terminal_writer().line(
        "the test suite changed the checkout (git status --porcelain):\n  " + "\n  ".join(new), red=True
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
