"""Dedup properties on synthetic embeddings (hypothesis): threshold respected, one per planted group,
independent of input order, idempotent."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import DedupParams
from pipeline.identities.consistency import consistency_reasons, normalise
from pipeline.identities.dedup import representatives, run_dedup, similar_pairs

THRESHOLD = 0.5


def planted(n_groups: int, sizes: list[int], seed: int, dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Random (nearly orthogonal) group centres; members are tiny perturbations of their centre."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.standard_normal((n_groups, dim)))
    vecs, group = [], []
    for g, size in enumerate(sizes):
        vecs.append(normalise(centres[g] + 0.01 * rng.standard_normal((size, dim))))
        group += [g] * size
    return np.concatenate(vecs).astype(np.float32), np.array(group)


def dedup_ids(vectors: np.ndarray, ids: np.ndarray, quality: np.ndarray) -> set[int]:
    pairs = similar_pairs(vectors, THRESHOLD)
    return set(ids[representatives(len(ids), pairs, quality, ids)].tolist())


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
    perm_seed=st.integers(0, 2**16),
)
def test_dedup_properties(sizes: list[int], seed: int, perm_seed: int) -> None:
    vectors, group = planted(len(sizes), sizes, seed)
    ids = np.arange(len(vectors)) * 7 + 3
    quality = np.random.default_rng(seed + 1).random(len(vectors))
    kept = dedup_ids(vectors, ids, quality)
    index = {int(i): k for k, i in enumerate(ids)}
    kv = vectors[[index[i] for i in sorted(kept)]]
    sims = kv @ kv.T
    assert (sims[~np.eye(len(kv), dtype=bool)] <= THRESHOLD).all()  # no kept pair above threshold
    assert sorted(group[[index[i] for i in kept]].tolist()) == list(range(len(sizes)))  # one per group
    perm = np.random.default_rng(perm_seed).permutation(len(vectors))
    assert dedup_ids(vectors[perm], ids[perm], quality[perm]) == kept  # order-independent
    sel = np.array(sorted(index[i] for i in kept))
    assert dedup_ids(vectors[sel], ids[sel], quality[sel]) == kept  # idempotent


def test_best_quality_survives_then_lowest_id() -> None:
    vectors, _ = planted(1, [3], seed=0)
    ids = np.array([10, 11, 12])
    assert dedup_ids(vectors, ids, np.array([0.1, 0.9, 0.5])) == {11}
    assert dedup_ids(vectors, ids, np.array([0.5, 0.5, 0.5])) == {10}


def test_ivf_path_finds_the_planted_pairs() -> None:
    vectors, _group = planted(300, [2] * 300, seed=3)
    pairs = similar_pairs(vectors, THRESHOLD, exact_max=100)
    assert {tuple(p) for p in pairs.tolist()} == {(2 * g, 2 * g + 1) for g in range(300)}


def test_consistency_drift_and_near_copy() -> None:
    rng = np.random.default_rng(0)
    base = normalise(rng.standard_normal(32))
    other = normalise(rng.standard_normal(32))
    emb = np.stack(
        [normalise(base + 0.3 * rng.standard_normal(32)) for _ in range(4)] + [base.copy(), base.copy(), other]
    )
    ids = np.zeros(7, np.int64)
    variants = np.arange(7)
    reasons = consistency_reasons(emb, ids, variants, min_consistency=0.3, max_similarity=0.99)
    assert reasons[6] == "drift"
    assert reasons[5] == "near_copy" and reasons[4] == ""  # the later copy goes, the first stays
    assert (reasons[:4] == "").all()


def test_run_dedup_carries_earlier_rejections() -> None:
    vectors, group = planted(3, [3, 3, 3], seed=5, dim=512)
    vectors = np.concatenate([vectors, vectors[:3]])  # identity 3 duplicates identity 0
    identity = np.concatenate([group, [3, 3, 3]])
    keys = [f"{i:09d}_{v:03d}" for i, v in zip(identity, [0, 1, 2] * 4, strict=True)]
    curation = pd.DataFrame({"key": keys, "identity": identity, "variant": [0, 1, 2] * 4, "keep": True, "reason": ""})
    curation.loc[1, ["keep", "reason"]] = [False, "no_face"]
    candidates = pd.DataFrame({"key": keys, "embedding": list(vectors.astype(np.float16)), "det_prob": 0.99})
    out = run_dedup(curation, candidates, DedupParams(min_sample_consistency=-1.0, max_sample_similarity=1.0))
    assert out.loc[1, "reason"] == "no_face"
    dropped = set(out.loc[out["reason"] == "duplicate_identity", "identity"])
    assert dropped == {3} or dropped == {0}
    assert out["keep"].sum() == 12 - 1 - 3
