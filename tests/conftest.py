"""Shared fixtures: small params, a cached face pass, and the gpu marker's skip."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.config import Params, validate_params

os.environ.setdefault("SYNTHFACES_NO_PROGRESS", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parent.parent


def small_params(**overrides: Any) -> Params:
    """A tiny smoke configuration: 2 shards of 3 identities x 4 variants, CPU, fp32."""
    raw: dict[str, Any] = {
        "generator": {"model": "smoke", "resolution": 96, "truncation_psi": 0.8},
        "identities": {"count": 6, "images_per_identity": 4, "oversample": 1.0, "shard_size": 3},
        "variation": {"mix_start": 1},
        "detect": {"min_face_size": 20},
        "embed": {"allow_random": True},
        "dataset": {"identities": 2, "images_per_identity": 2},
        "runtime": {"precision": "fp32", "batch_size": 8},
    }
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return validate_params(raw)


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
