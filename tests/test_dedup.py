"""Dedup properties on synthetic embeddings (hypothesis): threshold respected, one per planted group,
independent of input order, idempotent."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
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
    out = run_dedup(*duplicated_identities([0.99] * 12), LOOSE)
    assert out.loc[1, "reason"] == "no_face"
    assert set(out.loc[out["reason"] == "duplicate_identity", "identity"]) == {3}  # a tie: the lower id stays
    assert out["keep"].sum() == 12 - 1 - 3


@pytest.mark.parametrize(("copy_prob", "dropped"), [(0.999, 0), (0.95, 3)])
def test_run_dedup_keeps_the_duplicate_with_the_best_mean_detector_probability(copy_prob: float, dropped: int) -> None:
    """Mean over the samples still kept: identity 0's rejected sample (det_prob 0.0) does not drag it down."""
    probs = [0.98, 0.0, 0.98] + [0.99] * 6 + [copy_prob] * 3
    out = run_dedup(*duplicated_identities(probs), LOOSE)
    assert set(out.loc[out["reason"] == "duplicate_identity", "identity"]) == {dropped}


def test_ivf_recall_is_logged_as_measured(caplog: pytest.LogCaptureFixture) -> None:
    """Partners at cosine ~0.6 against a 0.5 threshold land in other IVF lists: probing 1 of 32 lists misses
    some, and the logged recall must be the real one (the sample covers every identity here)."""
    rng = np.random.default_rng(7)
    base = normalise(rng.standard_normal((600, 64)))
    noise = rng.standard_normal((300, 64))
    ortho = normalise(noise - (noise * base[:300]).sum(1, keepdims=True) * base[:300])
    partner = 0.6 * base[:300] + 0.8 * ortho  # cosine exactly 0.6 to its base
    x = np.concatenate([base, partner]).astype(np.float32)
    truth = {tuple(p) for p in similar_pairs(x, THRESHOLD).tolist()}
    assert len(truth) >= 300
    for nprobe in (1, 32):
        caplog.clear()
        with caplog.at_level("INFO", logger="pipeline.identities.dedup"):
            found = {tuple(p) for p in similar_pairs(x, THRESHOLD, exact_max=100, nlist=32, nprobe=nprobe).tolist()}
        recall = len(found & truth) / len(truth)
        logged = float(re.search(r"IVF recall ([0-9.]+)", caplog.text).group(1))
        assert found <= truth and logged == pytest.approx(recall, abs=1e-4)
        assert (recall < 0.9) if nprobe == 1 else (recall == 1.0)


def test_reference_people_are_never_kept(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors, group = planted(4, [3, 3, 3, 3], seed=7, dim=512)
    keys = [f"{i:09d}_{v:03d}" for i, v in zip(group, [0, 1, 2] * 4, strict=True)]
    curation = pd.DataFrame({"key": keys, "identity": group, "variant": [0, 1, 2] * 4, "keep": True, "reason": ""})
    candidates = pd.DataFrame({"key": keys, "embedding": list(vectors.astype(np.float16)), "det_prob": 0.99})
    real = tmp_path / "real.parquet"
    pq.write_table(pa.table({"embedding": [vectors[4].tolist(), normalise(np.ones(512)).tolist()]}), real)
    params = DedupParams(min_sample_consistency=-1.0, max_sample_similarity=1.0, reference=str(real))
    out = run_dedup(curation, candidates, params)
    assert set(out.loc[out["reason"] == "matches_reference", "identity"]) == {1}  # vectors[4] is identity 1
    assert out["keep"].sum() == 9


def test_missing_reference_file_is_a_clear_error(tmp_path) -> None:
    from pipeline.errors import PipelineError
    from pipeline.identities.dedup import load_reference

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
