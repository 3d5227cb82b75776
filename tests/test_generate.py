"""Candidate shards: byte-identical for the same params, resumable, corruption detected, writes atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.faces.columns import QUALITY_COLUMNS
from pipeline.generate.driver import run_generate
from pipeline.shards.candidates import ShardSpec, ShardStore, plan_shards, read_candidates
from pipeline.shards.io import atomic_path, sha256_file

from .conftest import columns_of, small_params


def test_plan_covers_identities_once() -> None:
    specs = plan_shards(10, 4)
    assert specs == [ShardSpec(0, 0, 4), ShardSpec(1, 4, 8), ShardSpec(2, 8, 10)]
    assert [s.name for s in specs] == ["shard-000000", "shard-000001", "shard-000002"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cand")
    run_generate(small_params(), out)
    return out


def test_rows_follow_the_candidate_contract(generated: Path) -> None:
    table = read_candidates(generated)
    params = small_params()
    assert table.num_rows == params.identities.count * params.identities.variants_per_identity
    df = table.to_pandas()
    assert list(df["key"][:2]) == ["000000000_000", "000000000_001"]
    assert df["identity"].tolist() == sorted(df["identity"].tolist())
    assert table.schema.field("embedding").type.list_size == 512
    assert table.schema.field("box").type.list_size == 4 and table.schema.field("landmarks").type.list_size == 10
    emb = np.stack(df["embedding"].to_numpy()).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=2e-3)
    assert set(QUALITY_COLUMNS) <= set(df.columns) and "attr_smoke_hair" in df.columns
    assert (df["det_prob"] > 0.9).mean() >= 0.9  # 24 of 24 measured
    assert df["image"].map(lambda b: b[:2] == b"\xff\xd8").all()  # JPEG
    assert df["aligned"].map(lambda b: b[:4] == b"\x89PNG").all()
    manifest = json.loads((generated / "manifest.json").read_text())
    assert manifest["embedder_weights"] == "none" and manifest["rows"] == table.num_rows
    assert manifest["generator"]["label"].startswith("smoke-test generator")


def test_same_params_give_byte_identical_shards(generated: Path, tmp_path: Path) -> None:
    run_generate(small_params(), tmp_path)
    for a in sorted(generated.glob("shard-*.parquet")):
        assert a.read_bytes() == (tmp_path / a.name).read_bytes(), a.name


def test_rerun_skips_finished_shards(generated: Path, tmp_path: Path) -> None:
    before = copy_of(generated, tmp_path)
    run_generate(small_params(), tmp_path)
    assert mtimes(tmp_path) == before


def copy_of(generated: Path, folder: Path) -> dict[str, int]:
    """`generated` copied into `folder`; returns each shard file's mtime (ns), to tell recomputed shards."""
    for f in generated.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
        os.utime(folder / f.name, ns=(1, 1))
    return mtimes(folder)


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("shard-*"))}


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "delete_marker"])
def test_damaged_shard_is_detected_and_recomputed(generated: Path, tmp_path: Path, damage: str) -> None:
    copy_of(generated, tmp_path)
    victim = tmp_path / "shard-000001.parquet"
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(bytes(data[:-100]))
    elif damage == "empty":
        victim.write_bytes(b"")
    else:
        (tmp_path / "shard-000001.json").unlink()
    os.utime(victim, ns=(1, 1))
    params = small_params()
    fingerprint = json.loads((generated / "manifest.json").read_text())["fingerprint"]
    assert ShardStore(tmp_path).shard_problem(plan_shards(6, 3)[1], fingerprint) is not None
    assert ShardStore(tmp_path).shard_problem(plan_shards(6, 3)[0], fingerprint) is None
    run_generate(params, tmp_path)
    after = mtimes(tmp_path)
    assert after["shard-000000.parquet"] == after["shard-000000.json"] == 1  # the sound shard was not touched
    assert after["shard-000001.parquet"] > 1 and after["shard-000001.json"] > 1  # recomputed, marker rewritten
    assert victim.read_bytes() == (generated / "shard-000001.parquet").read_bytes()
    assert (tmp_path / "shard-000001.json").read_bytes() == (generated / "shard-000001.json").read_bytes()


def test_count_change_only_adds_or_removes_shards(generated: Path, tmp_path: Path) -> None:
    before = copy_of(generated, tmp_path)
    run_generate(small_params(identities={"count": 9}), tmp_path)
    after = mtimes(tmp_path)
    assert {k: after[k] for k in before} == before  # the two finished shards were not recomputed
    assert after["shard-000002.parquet"] > 1
    run_generate(small_params(identities={"count": 3}), tmp_path)
    assert mtimes(tmp_path) == {"shard-000000.json": 1, "shard-000000.parquet": 1}


def test_changed_shaping_param_recomputes(generated: Path, tmp_path: Path) -> None:
    copy_of(generated, tmp_path)
    run_generate(small_params(generator={"truncation_psi": 0.5}), tmp_path)
    assert all(t > 1 for t in mtimes(tmp_path).values())
    first = (generated / "shard-000000.parquet").read_bytes()
    assert (tmp_path / "shard-000000.parquet").read_bytes() != first


def test_a_generation_version_bump_recomputes_finished_shards(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GENERATION_VERSION is in every shard's fingerprint: bumping it (what tests/test_golden.py demands of a
    change to candidate bytes) invalidates every finished shard."""
    from pipeline.generate import version

    copy_of(generated, tmp_path)
    monkeypatch.setattr(version, "GENERATION_VERSION", version.GENERATION_VERSION + 1)
    run_generate(small_params(), tmp_path)
    assert all(t > 1 for t in mtimes(tmp_path).values())
    assert (tmp_path / "shard-000000.json").read_bytes() != (generated / "shard-000000.json").read_bytes()


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new"


def test_stale_temporaries_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / f".shard-000000.parquet.tmp-{os.getpid() + 1}").write_bytes(b"x")
    (tmp_path / "keep.parquet").write_bytes(b"y")
    assert ShardStore(tmp_path).remove_stale_temporaries() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.parquet"]


def test_parquet_is_readable_column_by_column(generated: Path) -> None:
    table = pq.read_table(generated / "shard-000000.parquet", columns=["key", "det_prob"])
    assert table.column_names == ["key", "det_prob"]


def test_non_finite_generator_output_is_rejected(device_pass, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from pipeline.config import FilterParams
    from pipeline.curation.filter import apply_filter

    generator = device_pass.models.generator
    original = generator.synthesis

    def broken(ws, **kwargs):
        img = original(ws, **kwargs)
        img[1, 0, 5, 5] = float("nan")
        img[2] = float("inf")
        return img

    monkeypatch.setattr(generator, "synthesis", broken)
    cols = columns_of(device_pass, np.array([0, 0, 0, 0]), np.array([0, 1, 2, 3]))
    assert cols["q_finite"].tolist() == [1.0, 0.0, 0.0, 1.0]
    df = pd.DataFrame({k: v for k, v in cols.items() if k not in ("box", "landmarks", "embedding", "image", "aligned")})
    reasons = apply_filter(df, FilterParams(min_det_prob=0.0, min_face_fraction=0.0))["reason"].tolist()
    assert reasons[1] == reasons[2] == "non_finite"
    assert torch.isfinite(torch.tensor(np.stack(cols["embedding"]).astype(np.float32))).all()


def _write_shard_with(args: tuple[str, int, object]) -> tuple[float, float]:
    """Write shard 0 repeatedly from this process once both writers are ready; returns (first start, last end)."""
    import time

    import pyarrow as pa

    folder, value, barrier = args
    table = pa.table({"x": pa.array([value] * 200_000, pa.int64())})
    barrier.wait()  # type: ignore[attr-defined]
    start = time.time()
    for _ in range(12):
        ShardStore(folder).write_shard(ShardSpec(0, 0, 1), table, f"fp-{value}", {"samples": 200_000})
    return start, time.time()


def test_concurrent_writers_of_one_shard_never_mix(tmp_path: Path) -> None:
    """Two processes writing the same shard at the same time (a retried task) leave one writer's complete
    file + marker, or a pair the resume check refuses."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(2) as pool:
        barrier = manager.Barrier(2)
        (a0, a1), (b0, b1) = pool.map(_write_shard_with, [(str(tmp_path), 1, barrier), (str(tmp_path), 2, barrier)])
    assert max(a0, b0) < min(a1, b1)  # the writers really overlapped
    values = set(pq.read_table(tmp_path / "shard-000000.parquet").column("x").to_pylist())
    assert values in ({1}, {2})  # one writer's complete file
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["shard-000000.json", "shard-000000.parquet"]
    marker = json.loads((tmp_path / "shard-000000.json").read_text())
    if sha256_file(tmp_path / "shard-000000.parquet") == marker["sha256"]:  # a consistent pair is one writer's
        assert values == {int(marker["fingerprint"][-1])}
    else:  # a mixed pair is caught by the resume check
        assert ShardStore(tmp_path).shard_problem(ShardSpec(0, 0, 1), marker["fingerprint"]) is not None


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_the_filter_stage_refuses_a_shard_that_changed_after_generate(generated: Path, tmp_path: Path, damage) -> None:
    """The first stage after generate hashes every shard against its marker: an edited file (or a corrupt DVC
    cache object linked back into the workspace) stops it with the file, what differs and the way out."""
    from pipeline.curation.filter import run_filter
    from pipeline.errors import PipelineError

    copy_of(generated, tmp_path)
    victim = tmp_path / "shard-000001.parquet"
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data[:-10] if damage == "truncate" else data))
    with pytest.raises(PipelineError) as err:
        run_filter(tmp_path, small_params().filter, tmp_path / "filter.parquet")
    what = "sha256" if damage == "flip" else f"{len(data) - 10} bytes, its marker says {len(data)}"
    assert str(err.value).startswith(f"{victim}: {what}") and f"find .dvc/cache -samefile {victim} -delete" in str(
        err.value
    )
    assert not (tmp_path / "filter.parquet").exists()
