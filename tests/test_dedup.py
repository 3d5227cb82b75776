"""Dedup properties on synthetic embeddings (hypothesis): no kept pair above the threshold, every dropped
identity has a kept look-alike, independent of input order, at least as many kept as one per component."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from pipeline.config import DedupParams
from pipeline.curation.consistency import consistency_reasons, normalise
from pipeline.curation.dedup import dedup_frame, dedup_identities, independent_set
from pipeline.curation.search import search

THRESHOLD = 0.5
PARAMS = DedupParams(max_identity_similarity=THRESHOLD)


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
    keep, _, _ = dedup_identities(vectors, ids, quality, PARAMS)
    return set(ids[keep].tolist())


def chains(n_chains: int, length: int, seed: int, dim: int = 64) -> np.ndarray:
    """Paths a~b~c~...: neighbours at cosine 0.6 (above the threshold), two apart at 0.36 (below)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_chains):
        basis = np.linalg.qr(rng.standard_normal((dim, length)))[0].T  # orthonormal rows
        v = [basis[0]]
        for j in range(1, length):
            v.append(0.6 * v[-1] + 0.8 * basis[j])
        out += v
    return np.asarray(out, np.float32)


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
    assert sorted(group[[index[i] for i in kept]].tolist()) == list(range(len(sizes)))  # one per tight group
    perm = np.random.default_rng(perm_seed).permutation(len(vectors))
    assert dedup_ids(vectors[perm], ids[perm], quality[perm]) == kept  # order-independent
    sel = np.array(sorted(index[i] for i in kept))
    assert dedup_ids(vectors[sel], ids[sel], quality[sel]) == kept  # idempotent


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 60),
    edges=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 59)), max_size=150),
    seed=st.integers(0, 2**16),
)
def test_independent_set_on_random_graphs(n: int, edges: list[tuple[int, int]], seed: int) -> None:
    """Independent (no kept pair), maximal (every dropped node has a kept neighbour), independent of the
    order nodes come in, and never fewer than one per connected component."""
    pairs = np.array(sorted({(min(a, b), max(a, b)) for a, b in edges if a != b and a < n and b < n}), np.int64)
    pairs = pairs.reshape(-1, 2)
    rng = np.random.default_rng(seed)
    quality, ids = rng.random(n).round(1), rng.permutation(n) * 3
    keep = independent_set(pairs, quality, ids)
    assert not (keep[pairs[:, 0]] & keep[pairs[:, 1]]).any()
    dropped_has_kept = np.zeros(n, bool)
    for a, b in pairs:
        dropped_has_kept[a] |= keep[b]
        dropped_has_kept[b] |= keep[a]
    assert dropped_has_kept[~keep].all()
    perm = rng.permutation(n)
    inverse = np.argsort(perm)
    moved = inverse[pairs] if len(pairs) else pairs
    assert (independent_set(np.sort(moved, 1), quality[perm], ids[perm]) == keep[perm]).all()
    graph = coo_array((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    assert keep.sum() >= connected_components(graph, directed=False)[0]


def test_a_path_of_three_keeps_both_ends() -> None:
    vectors = chains(1, 3, seed=0)
    sims = vectors @ vectors.T
    assert sims[0, 1] > THRESHOLD and sims[1, 2] > THRESHOLD and sims[0, 2] < THRESHOLD
    assert dedup_ids(vectors, np.array([10, 11, 12]), np.array([0.9, 0.99, 0.9])) == {10, 12}


def test_fewest_look_alikes_then_best_quality_then_lowest_id() -> None:
    vectors, _ = planted(1, [3], seed=0)
    ids = np.array([10, 11, 12])
    assert dedup_ids(vectors, ids, np.array([0.1, 0.9, 0.5])) == {11}
    assert dedup_ids(vectors, ids, np.array([0.5, 0.5, 0.5])) == {10}


def test_ivf_training_sample_is_chosen_by_identity_not_row() -> None:
    """Above exact_search_max the IVF index decides; shuffled rows must give the same kept set."""
    vectors = chains(200, 3, seed=4)
    ids = np.arange(len(vectors)) * 5
    quality = np.full(len(vectors), 0.9)
    params = DedupParams(
        max_identity_similarity=THRESHOLD, exact_search_max=100, ivf_nlist=8, ivf_nprobe=2, min_recall=0.5
    )
    keep, _, report = dedup_identities(vectors, ids, quality, params)
    perm = np.random.default_rng(0).permutation(len(vectors))
    keep_perm, _, _ = dedup_identities(vectors[perm], ids[perm], quality[perm], params)
    assert report.method == "ivf" and set(ids[perm][keep_perm]) == set(ids[keep])
    assert keep.sum() >= 400  # both ends of every chain (more where the IVF misses a pair)


def test_ivf_path_finds_the_planted_pairs() -> None:
    vectors, _group = planted(300, [2] * 300, seed=3)
    pairs, report = search(vectors.astype(np.float16), THRESHOLD, torch.device("cpu"), exact_max=100, min_recall=0.99)
    assert report.method == "ivf" and report.recall == 1.0
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


def duplicated_identities(det_prob: list[float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Identities 0-2 distinct, identity 3 a copy of identity 0; sample 1 already rejected by the filter."""
    vectors, group = planted(3, [3, 3, 3], seed=5, dim=512)
    vectors = np.concatenate([vectors, vectors[:3]])
    identity = np.concatenate([group, [3, 3, 3]])
    keys = [f"{i:09d}_{v:03d}" for i, v in zip(identity, [0, 1, 2] * 4, strict=True)]
    curation = pd.DataFrame({"key": keys, "identity": identity, "variant": [0, 1, 2] * 4, "keep": True, "reason": ""})
    curation.loc[1, ["keep", "reason"]] = [False, "no_face"]
    candidates = pd.DataFrame({"key": keys, "embedding": list(vectors.astype(np.float16)), "det_prob": det_prob})
    return curation, candidates


LOOSE = DedupParams(min_sample_consistency=-1.0, max_sample_similarity=1.0)


def test_run_dedup_carries_earlier_rejections() -> None:
    out = dedup_frame(*duplicated_identities([0.99] * 12), LOOSE)
    assert out.loc[1, "reason"] == "no_face"
    assert set(out.loc[out["reason"] == "duplicate_identity", "identity"]) == {3}  # a tie: the lower id stays
    assert out["keep"].sum() == 12 - 1 - 3


@pytest.mark.parametrize(("copy_prob", "dropped"), [(0.999, 0), (0.95, 3)])
def test_run_dedup_keeps_the_duplicate_with_the_best_mean_detector_probability(copy_prob: float, dropped: int) -> None:
    """Mean over the samples still kept: identity 0's rejected sample (det_prob 0.0) does not drag it down."""
    probs = [0.98, 0.0, 0.98] + [0.99] * 6 + [copy_prob] * 3
    out = dedup_frame(*duplicated_identities(probs), LOOSE)
    assert set(out.loc[out["reason"] == "duplicate_identity", "identity"]) == {dropped}


def test_reference_people_are_never_kept(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors, group = planted(4, [3, 3, 3, 3], seed=7, dim=512)
    keys = [f"{i:09d}_{v:03d}" for i, v in zip(group, [0, 1, 2] * 4, strict=True)]
    curation = pd.DataFrame({"key": keys, "identity": group, "variant": [0, 1, 2] * 4, "keep": True, "reason": ""})
    candidates = pd.DataFrame({"key": keys, "embedding": list(vectors.astype(np.float16)), "det_prob": 0.99})
    real = tmp_path / "real.parquet"
    pq.write_table(pa.table({"embedding": [vectors[4].tolist(), normalise(np.ones(512)).tolist()]}), real)
    params = DedupParams(min_sample_consistency=-1.0, max_sample_similarity=1.0, reference=str(real))
    with caplog.at_level("INFO", logger="pipeline.curation.dedup"):
        out = dedup_frame(curation, candidates, params)
    assert set(out.loc[out["reason"] == "matches_reference", "identity"]) == {1}  # vectors[4] is identity 1
    assert out["keep"].sum() == 9
    assert "0 dropped as look-alikes, 1 as closer than 0.30 to a reference person, 3 kept" in caplog.text


def test_missing_reference_file_is_a_clear_error(tmp_path) -> None:
    from pipeline.curation.dedup import load_reference
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match=r"dedup.reference: .*nope.parquet not found"):
        load_reference(tmp_path / "nope.parquet")


def test_similarity_report_separates_planted_identities(tmp_path) -> None:
    from pipeline.report.metrics import similarity_report

    vectors, group = planted(50, [4] * 50, seed=2, dim=128)
    stats = similarity_report(vectors, group, tmp_path)
    assert stats["genuine_mean"] > 0.9 and abs(stats["impostor_mean"]) < 0.05
    assert stats["eer"] < 0.01 and 0.1 < stats["eer_threshold"] < 0.99
    table = pd.read_csv(tmp_path / "similarity.csv")
    assert list(table.columns) == ["cosine", "genuine", "impostor"]
    assert table["genuine"].sum() == pytest.approx(1) and table["impostor"].sum() == pytest.approx(1)
