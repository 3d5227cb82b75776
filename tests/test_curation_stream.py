"""Curation streams candidate shards: the stage functions over many shards decide what the in-memory
functions decide over one table, tables from other candidates are refused, and export bytes do not
depend on the number of worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import BalanceParams, DatasetParams, DedupParams, FilterParams
from pipeline.curation.balance import achieved, run_balance, select, target_bins
from pipeline.curation.capacity import capacity_curve, capacity_metrics
from pipeline.curation.cells import bounds
from pipeline.curation.dedup import dedup_frame, run_dedup
from pipeline.curation.filter import apply_filter, run_filter
from pipeline.curation.table import read_curation, write_curation
from pipeline.errors import PipelineError
from pipeline.faces.attributes import AttributeInfo
from pipeline.faces.columns import QUALITY_COLUMNS
from pipeline.shards.candidates import MANIFEST, ShardStore, candidate_schema, plan_shards, sample_key
from pipeline.shards.io import write_json_atomic
from tests.conftest import EXPORTED, small_params

CATALOG = {
    "hair": AttributeInfo("identity", ("dark", "light")),
    "yaw_bin": AttributeInfo("sample", ("left", "frontal", "right")),
}
ATTRS = [pa.field("attr_hair", pa.string()), pa.field("attr_yaw_bin", pa.string())]


def write_store(folder: Path, identities: int, variants: int, shard_size: int, seed: int = 0) -> pd.DataFrame:
    """Candidate shards without images worth looking at: planted look-alikes, drift, labels. Returns all rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities, 512)).astype(np.float32)
    centres[1::7] = centres[0::7][: len(centres[1::7])] + 0.1 * rng.standard_normal((len(centres[1::7]), 512))
    hair = np.where(rng.random(identities) < 0.5, "light", "dark")
    store, markers, frames = ShardStore(folder), [], []
    for spec in plan_shards(identities, shard_size):
        ids = np.repeat(np.arange(spec.start, spec.stop), variants)
        var = np.tile(np.arange(variants, dtype=np.int16), spec.stop - spec.start)
        n = len(ids)
        emb = centres[ids] + 0.5 * rng.standard_normal((n, 512)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        cols = {
            "key": [sample_key(int(i), int(v)) for i, v in zip(ids, var, strict=True)], "identity": ids,
            "variant": var, "seed": ids, "psi": np.ones(n, np.float32),
            "det_prob": np.where(rng.random(n) < 0.1, 0.2, 0.99).astype(np.float32), "n_faces": np.ones(n, np.int16),
            "box": [[0.0, 0.0, 50.0, 50.0]] * n, "landmarks": [[1.0] * 10] * n,
            "embedding": list(emb.astype(np.float16)),
            **{c: np.full(n, 0.5, np.float32) for c in QUALITY_COLUMNS},
            "attr_hair": np.repeat(hair[spec.start : spec.stop], variants),
            "attr_yaw_bin": np.array(["left", "frontal", "right"])[rng.integers(0, 3, n)],
            "image": [b"x"] * n, "aligned": [b"x"] * n, "model_sha256": ["0"] * n, "params_fingerprint": ["t"] * n,
        }  # fmt: skip
        for column, value in {"q_finite": 1.0, "q_landmarks_inside": 1.0, "q_align_residual": 0.01, "q_roll": 0.0,
                              "q_clipped": 0.0, "q_disc": np.nan}.items():  # fmt: skip
            cols[column] = np.full(n, value, np.float32)
        schema = candidate_schema(ATTRS)
        table = pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema)
        markers.append(store.write_shard(spec, table, "test", {"faces_found": n}))
        frames.append(table.drop_columns(["image", "aligned"]).to_pandas())
    write_json_atomic(folder / MANIFEST, {"rows": sum(m["rows"] for m in markers), "shards": markers})
    return pd.concat(frames, ignore_index=True)


LOOSE_FILTER = FilterParams(min_face_fraction=0.0, brightness=(0.0, 1.0), max_clipped=1.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("store")
    return folder, write_store(folder / "candidates", identities=70, variants=6, shard_size=9)


def test_streamed_stages_decide_what_the_in_memory_functions_decide(store, tmp_path: Path) -> None:
    folder, rows = store
    cand = folder / "candidates"
    run_filter(cand, LOOSE_FILTER, tmp_path / "f.parquet")
    expected_filter = apply_filter(rows, LOOSE_FILTER)
    got_filter = read_curation(tmp_path / "f.parquet").to_pandas()
    assert got_filter["reason"].tolist() == expected_filter["reason"].tolist()
    assert 0 < (~got_filter["keep"]).sum() < len(rows)

    params = DedupParams(max_identity_similarity=0.5, min_sample_consistency=0.2, max_sample_similarity=0.99)
    _, state = run_dedup(cand, tmp_path / "f.parquet", params, tmp_path / "d.parquet")
    got = read_curation(tmp_path / "d.parquet").to_pandas()
    expected = dedup_frame(expected_filter, rows[["key", "identity", "variant", "embedding", "det_prob"]], params)
    assert got["reason"].tolist() == expected["reason"].tolist()
    assert (got["reason"] == "duplicate_identity").sum() > 0 and len(state.pairs) > 0

    dataset, balance = DatasetParams(identities=30, images_per_identity=3), BalanceParams(tolerance=0.05)
    bins = target_bins({"hair": {"light": 0.4, "dark": 0.6}, "yaw_bin": {"left": 0.5, "frontal": 0.25,
                                                                         "right": 0.25}}, CATALOG)  # fmt: skip
    _, plan = run_balance(cand, tmp_path / "d.parquet", dataset, balance, bins, tmp_path / "s.parquet")
    streamed = read_curation(tmp_path / "s.parquet").to_pandas()
    labelled = expected.merge(rows[["key", "attr_hair", "attr_yaw_bin"]], on="key")
    whole = select(
        labelled,
        dataset,
        balance,
        {"hair": {"light": 0.4, "dark": 0.6}, "yaw_bin": {"left": 0.5, "frontal": 0.25, "right": 0.25}},
        CATALOG,
    )
    assert streamed["keep"].tolist() == whole["keep"].tolist()
    assert streamed["class"].tolist() == whole["class"].tolist()
    chosen = streamed.merge(labelled[["key", "attr_hair", "attr_yaw_bin"]], on="key")
    shares = achieved(chosen, bins)
    for b in bins:
        total = 30 if b.level == "identity" else 90
        lo, hi = bounds(b.share, total, 0.05)
        assert lo <= round(shares[b.name] * total) <= hi, (b.name, shares[b.name])
        assert plan.counts[b.name] == round(shares[b.name] * total)
    assert sorted(set(streamed.loc[streamed["keep"], "class"])) == list(range(30))


def test_a_table_from_other_candidates_is_refused(store, tmp_path: Path) -> None:
    folder, rows = store
    stale = apply_filter(rows, LOOSE_FILTER).iloc[:-6]  # identity 69 missing: made before a change
    write_curation(stale, tmp_path / "f.parquet")
    with pytest.raises(PipelineError, match=r"curation table .* re-run"):
        run_dedup(folder / "candidates", tmp_path / "f.parquet", DedupParams(), tmp_path / "d.parquet")


def test_filter_counts_unscored_candidates_over_every_shard(store, tmp_path: Path) -> None:
    folder, rows = store
    with pytest.raises(PipelineError, match=rf"filter.min_disc_logit: {len(rows)} of {len(rows)} candidates"):
        run_filter(folder / "candidates", FilterParams(min_disc_logit=0.0), tmp_path / "f.parquet")
    assert not (tmp_path / "f.parquet").exists()


def test_capacity_curve_counts_identities_without_an_earlier_look_alike() -> None:
    ids = np.arange(8)
    pairs = np.array([[0, 5], [1, 2], [6, 7]])  # 5 resembles 0, 2 resembles 1, 7 resembles 6
    kept = np.array([1, 1, 0, 1, 1, 0, 1, 0], bool)
    curve = capacity_curve(ids, pairs, kept, block=5, generated=8)
    assert curve["identities"].tolist() == [5, 8]
    assert curve["novel"].tolist() == [0.8, 0.3333] and curve["kept"].tolist() == [0.8, 0.3333]
    assert capacity_metrics(curve)["novel_last_block"] == 0.3333


def test_export_bytes_do_not_depend_on_the_number_of_workers(exported_dataset: Path, tmp_path: Path) -> None:
    from pipeline.export.run import run_export

    root = exported_dataset.parent
    params = small_params(**{**EXPORTED, "export": {**EXPORTED["export"], "workers": 1}})
    manifest = run_export(params, root / "candidates", root / "selection.parquet", tmp_path / "one")
    original = json.loads((exported_dataset / "manifest.json").read_text())
    digests = {f["path"]: f["sha256"] for f in manifest["files"] if f["path"] != "README.md"}
    assert digests == {f["path"]: f["sha256"] for f in original["files"] if f["path"] != "README.md"}
    assert len(digests) >= 3
    meta = pq.read_table(tmp_path / "one" / "metadata.parquet")
    assert meta.column("key").to_pylist() == sorted(meta.column("key").to_pylist())
    assert not (tmp_path / "one" / ".export-spill").exists()


def test_stages_remove_what_a_killed_run_left_before_they_write(tmp_path: Path) -> None:
    """A killed writer's `.NAME.tmp-*` files: the curation table's writer and the calibrate stage remove them
    when they start, so DVC never records them as outputs."""
    from pipeline.calibrate import run_calibrate
    from pipeline.curation.table import write_curation

    (tmp_path / "calibration").mkdir()
    leftovers = [tmp_path / ".filter.parquet.tmp-123-abcd1234", tmp_path / "calibration" / ".directions.json.tmp-9-x"]
    for path in leftovers:
        path.write_bytes(b"partial")
    rows = pd.DataFrame({"key": ["000000000_000"], "identity": [0], "variant": [0], "keep": [True], "reason": [""]})
    write_curation(rows, tmp_path / "filter.parquet")
    run_calibrate(small_params(attributes={"estimators": ["pose"]}), tmp_path / "calibration")
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in (tmp_path / "calibration").iterdir()) == ["directions.json", "steer.json"]


def test_the_measured_recall_travels_from_dedup_to_the_metrics(store, tmp_path: Path) -> None:
    """IVF forced (exact_search_max 10): the recall dedup measured is the one in the dedup table's notes, in
    the selection's (which export copies into manifest.json and the card) and in metrics.json's dedup.search."""
    from pipeline.curation.table import curation_notes
    from pipeline.report.metrics import build_metrics

    folder, rows = store
    cand = folder / "candidates"
    run_filter(cand, LOOSE_FILTER, tmp_path / "f.parquet")
    params = DedupParams(max_identity_similarity=0.5, min_sample_consistency=0.2, exact_search_max=10, ivf_nlist=8,
                         ivf_nprobe=1, min_recall=0.5)  # fmt: skip
    _, state = run_dedup(cand, tmp_path / "f.parquet", params, tmp_path / "d.parquet")
    assert state.search.method == "ivf" and state.search.sample_queries == 70
    notes = curation_notes(tmp_path / "d.parquet")["search"]
    assert notes == state.search.to_json() and notes["recall"] == state.search.rounds[-1]["recall"]
    run_balance(cand, tmp_path / "d.parquet", DatasetParams(identities=5, images_per_identity=2), BalanceParams(), [],
                tmp_path / "s.parquet")  # fmt: skip
    assert curation_notes(tmp_path / "s.parquet")["search"] == notes
    deduped = read_curation(tmp_path / "d.parquet", ["key", "identity", "keep", "reason"])
    manifest = {"rows": len(rows), "identities": 70, "shards": []}
    metrics = build_metrics(manifest, deduped, deduped, deduped, {"counts": {}})
    assert metrics["dedup"]["search"] == notes
