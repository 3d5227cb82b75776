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


def make_device_pass(params: Params, calibration: Path | None = None, weights: Any = None, device: str = "cpu"):
    """The generate stage's DevicePass for `params` on the CPU (calibration: a calibrate stage's folder)."""
    from pipeline.generate.worker import build_device_pass
    from pipeline.identities.calibration import Calibration
    from pipeline.weights import WeightsStore

    return build_device_pass(params, torch.device(device), weights or WeightsStore(), Calibration.load(calibration))


def shard_table_of(device_pass: Any, params: Params, spec: Any, fingerprint: str = "x") -> Any:
    """One shard's candidate table as the generate stage computes it (not written anywhere)."""
    from pipeline.generate.worker import compute_shard, plan_config
    from pipeline.shards.encode import BoundedPool

    return compute_shard(device_pass, spec, plan_config(params), fingerprint, BoundedPool(2), lambda n: None)


def columns_of(device_pass: Any, identities: Any, variants: Any, **rows: Any) -> dict[str, Any]:
    """A batch's candidate columns, images encoded (the device half, then the CPU half)."""
    from pipeline.generate.records import encode_images

    return encode_images(device_pass.compute(identities, variants, **rows), device_pass.models.jpeg)


def latents_of(generator: Any, params: Params, device: str = "cpu"):
    """`Latents` of `generator` with `params`' seed, truncation and variation."""
    from pipeline.identities.sampling import Latents

    return Latents(generator, params.seed, params.generator, params.variation, torch.device(device))


def analyzer_of(params: Params, image_size: int, device: str = "cpu"):
    """The face stack configured by `params`' detect, align, embed and artifacts sections."""
    from pipeline.faces.analyze import FaceAnalyzer

    return FaceAnalyzer(
        params.detect, params.align, params.embed, torch.device(device), image_size,
        scorers=params.artifacts.scorers,
    )  # fmt: skip


@pytest.fixture(scope="session")
def device_pass():
    return make_device_pass(small_params())


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
    from pipeline.generate.driver import run_generate

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
