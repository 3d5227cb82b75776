"""Candidate bytes are pinned per generation version: a change that alters them must bump the version, and one
that does not keeps every shard (tests/golden_shards.py renders the cases; the golden is recorded there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.generate.version import CALIBRATION_VERSION, GENERATION_VERSION

from .golden_shards import CASES, GOLDEN, differences, render

KEY = f"generation-{GENERATION_VERSION}/calibration-{CALIBRATION_VERSION}"


def test_golden_is_recorded_for_the_current_versions() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert KEY in golden, f"no golden for {KEY}: record it with `uv run python -m tests.golden_shards --record`"
    assert set(golden[KEY]["cases"]) == set(CASES)


def test_candidate_bytes_equal_the_golden_of_this_generation_version(tmp_path: Path) -> None:
    expected = json.loads(GOLDEN.read_text())[KEY]
    with torch.random.fork_rng(devices=[]):
        threads = torch.get_num_threads()
        try:
            got = render(tmp_path)
        finally:
            torch.set_num_threads(threads)
    changed = differences(expected, got)
    if changed and got["cpu"] != expected["cpu"]:
        pytest.skip(
            f"golden recorded on a {expected['cpu']} CPU, this one is {got['cpu']}: CPU kernels round differently"
        )
    assert not changed, (
        "candidate bytes changed without a version bump:\n  " + "\n  ".join(changed) + "\n"
        "If that is intended, bump GENERATION_VERSION (candidates) or CALIBRATION_VERSION (directions) in "
        "pipeline/generate/version.py and record: uv run python -m tests.golden_shards --record"
    )


def test_where_the_weights_lie_is_not_part_of_a_shards_fingerprint() -> None:
    """The weights enter by their sha256; their path (another checkout, a moved file) recomputes nothing, and
    the golden holds in any checkout."""
    from pipeline.config import validate_params
    from pipeline.generate.version import shard_fingerprint

    def fingerprint(**generator: object) -> str:
        return shard_fingerprint(validate_params({"generator": generator}), "{}", ["sha", "vggface2", "fp32", "pil"])

    here = fingerprint(model="/work/a/stylegan2.pkl")
    assert here == fingerprint(model="/tmp/b/stylegan2.pkl")
    assert here != fingerprint(model="/work/a/stylegan2.pkl", truncation_psi=0.5)
