"""Executors: several devices in one process, and Ray, give the same bytes as one device; OOM back-off."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.generate import FacePass, ShardJob, run_generate
from pipeline.shards.io import sha256_file

from .conftest import small_params


def one_thread(**overrides):
    """CPU float results depend on the thread count (reduction order): pin it, as a Ray worker has one."""
    return small_params(identities={"count": 4, "shard_size": 2}, runtime={"threads": 1, **overrides})


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def shard_digests(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.glob("shard-*.parquet"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("one-device")
    run_generate(one_thread(), out)
    return shard_digests(out)


def test_two_devices_give_the_bytes_of_one(reference: dict[str, str], tmp_path: Path) -> None:
    """Devices simulated on the CPU: two workers take shards from one queue."""
    params = one_thread(devices=["cpu", "cpu"])
    manifest = run_generate(params, tmp_path)
    assert len(manifest["shards"]) == 2 and shard_digests(tmp_path) == reference


def test_ray_tasks_give_the_bytes_of_the_local_executor(reference: dict[str, str], tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        params = one_thread(executor="ray", output_url=(tmp_path / "store").as_uri())  # workers write via fsspec
        run_generate(params, tmp_path)
        assert len(ray.nodes()) == 1
    finally:
        ray.shutdown()
    assert shard_digests(tmp_path) == reference


def test_shard_job_pickles_without_its_models(face_pass: FacePass, tmp_path: Path) -> None:
    job = ShardJob(face_pass.params, tmp_path, "f" * 64)
    job.attach(face_pass, lambda n: None)
    copy = pickle.loads(pickle.dumps(job))
    assert copy._local == {} and copy.fingerprint == job.fingerprint and len(pickle.dumps(job)) < 100_000


def test_out_of_memory_halves_the_batch_instead_of_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    fp = FacePass(small_params(runtime={"batch_size": 8}), torch.device("cpu"))
    real = FacePass.compute
    sizes = []

    def limited(self, identities, variants, offsets=None):
        sizes.append(len(identities))
        if len(identities) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, identities, variants, offsets)

    monkeypatch.setattr(FacePass, "compute", limited)
    from pipeline.shards.candidates import ShardSpec

    table = fp.shard_table(ShardSpec(0, 0, 3), "x", lambda n: None)
    assert table.num_rows == 12 and fp.batch_size == 2  # 8 -> 4 -> 2, then every batch fits
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) == 2
    assert np.array_equal(table.column("identity").to_numpy(), np.repeat(np.arange(3), 4))
