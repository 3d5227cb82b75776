"""Latents depend on (seed, identity, variant) alone: not on batch composition, order, or other identities."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.generators import load_generator
from pipeline.identities.sampling import check_variation, sample_seed

from .conftest import latents_of, small_params

CPU = torch.device("cpu")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 20)), min_size=1, max_size=12, unique=True))
def test_ws_independent_of_batch(pairs: list[tuple[int, int]]) -> None:
    g = load_generator("smoke")
    params = small_params()
    ids = np.array([p[0] for p in pairs])
    var = np.array([p[1] for p in pairs])
    together = latents_of(g, params).ws(ids, var)
    for k, (i, v) in enumerate(pairs):
        alone = latents_of(g, params).ws(np.array([i]), np.array([v]))
        assert torch.equal(together[k], alone[0])


def test_variants_keep_identity_layers_and_mix_the_rest() -> None:
    g = load_generator("smoke")
    params = small_params()
    ws = latents_of(g, params).ws(np.array([7, 7, 7]), np.array([0, 1, 2]))
    assert torch.equal(ws[0, 0], ws[1, 0]) and torch.equal(ws[0, 0], ws[2, 0])
    assert not torch.equal(ws[0, 1], ws[1, 1]) and not torch.equal(ws[1, 1], ws[2, 1])


def test_seed_changes_everything() -> None:
    g = load_generator("smoke")
    a = latents_of(g, small_params()).ws(np.array([3]), np.array([0]))
    b = latents_of(g, small_params(seed=1)).ws(np.array([3]), np.array([0]))
    assert not torch.allclose(a, b)
    assert sample_seed(0, 3, 0) != sample_seed(1, 3, 0) != sample_seed(0, 3, 1)
    assert 0 <= sample_seed(2**62, 10**9, 999) < 2**63


def test_mix_layers_checked_against_the_model() -> None:
    g = load_generator("smoke")
    assert check_variation(g, small_params(variation={"mix_start": 2}).variation) == [
        "variation.mix_start: must be < the generator's 2 layers, got 2"
    ]
    assert check_variation(g, small_params(variation={"mix_start": 0, "mix_stop": 3}).variation) == [
        "variation.mix_stop: must be <= the generator's 2 layers, got 3"
    ]
