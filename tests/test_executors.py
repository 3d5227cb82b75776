"""Executors: several devices (one process each) and Ray give the same bytes as one device; OOM back-off."""

from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.generate.device_pass import DevicePass
from pipeline.generate.driver import run_generate
from pipeline.generate.worker import ShardJob
from pipeline.identities.calibration import Calibration
from pipeline.runtime.executors import LocalExecutor, RayExecutor
from pipeline.shards.candidates import ShardSpec, plan_shards
from pipeline.shards.io import sha256_file
from pipeline.weights import WeightsStore

from .conftest import make_device_pass, shard_table_of, small_params


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


class RecordingFactory:
    """A worker factory that appends each build and each shard it computes to files, so a test can count what
    happened in other threads or processes. Pickled by value into Ray workers."""

    def __init__(self, folder: Path, seconds_per_shard: float = 0.0, wait_for: tuple[str, int] = ("builds", 0)):
        self.folder, self.seconds, self.cache_key = str(folder), seconds_per_shard, f"recording-{folder.name}"
        self.wait_for = wait_for  # each shard waits until the named file has this many lines (say, workers built)
        self.counted: list[int] = []  # progress the driver received
        self.send = None

    def __call__(self, device: torch.device) -> RecordingWorker:
        with open(os.path.join(self.folder, "builds"), "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return RecordingWorker(self, str(device))

    def progress(self, images: int) -> None:
        self.counted.append(images)

    def report_progress(self, send) -> None:
        self.send = send

    def lines(self, name: str) -> list[list[str]]:
        path = Path(self.folder) / name
        return [line.split() for line in path.read_text().splitlines()] if path.is_file() else []


class RecordingWorker:
    def __init__(self, factory: RecordingFactory, device: str):
        self.factory, self.device, self.tag = factory, device, f"{os.getpid()}-{id(self)}"

    def __call__(self, spec: ShardSpec) -> None:
        deadline = time.monotonic() + 120
        name, count = self.factory.wait_for
        while len(self.factory.lines(name)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(self.factory.seconds)
        with open(os.path.join(self.factory.folder, "shards"), "a") as fh:
            fh.write(f"{spec.name} {os.getpid()} {self.tag}\n")
        (self.factory.send or self.factory.progress)(spec.stop - spec.start)

    def flush(self) -> None:
        pass


def test_every_device_takes_shards_from_the_queue_in_its_own_process(tmp_path: Path) -> None:
    factory = RecordingFactory(tmp_path, seconds_per_shard=0.05, wait_for=("builds", 3))
    LocalExecutor().run(plan_shards(8, 1), factory, [torch.device("cpu")] * 3)
    shards = factory.lines("shards")
    assert sorted(name for name, _, _ in shards) == [s.name for s in plan_shards(8, 1)]  # each exactly once
    assert len({tag for _, _, tag in shards}) == 3 and len(factory.lines("builds")) == 3  # every worker took some
    pids = {pid for (pid,) in factory.lines("builds")}
    assert len(pids) == 3 and str(os.getpid()) in pids  # the first device in this process, one process per other
    assert sum(factory.counted) == 8 and len(factory.counted) == 8  # every process's progress reached the driver


class FailingFactory(RecordingFactory):
    """Builds in the driver; in any other process it fails (after saying so in the file `failed`)."""

    def __call__(self, device: torch.device) -> RecordingWorker:
        if os.getpid() != self.driver:
            with open(os.path.join(self.folder, "failed"), "a") as fh:
                fh.write(f"{os.getpid()}\n")
            raise OSError(28, "No space left on device")
        return super().__call__(device)


def test_a_failing_device_process_stops_the_run_with_its_error(tmp_path: Path) -> None:
    factory = FailingFactory(tmp_path, seconds_per_shard=0.05, wait_for=("failed", 1))
    factory.driver = os.getpid()
    with pytest.raises(OSError, match="No space left on device"):
        LocalExecutor().run(plan_shards(200, 1), factory, [torch.device("cpu")] * 2)
    assert len(factory.lines("shards")) < 200  # the driver's worker stopped after the shards in hand


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with two worker slots for the module; the test module is pickled by value into its workers."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_ray_tasks_give_the_bytes_of_the_local_executor(local_ray, reference: dict[str, str], tmp_path: Path) -> None:
    params = one_thread(executor="ray", output_url=(tmp_path / "store").as_uri())  # workers write via fsspec
    run_generate(params, tmp_path)
    assert shard_digests(tmp_path / "store") == shard_digests(tmp_path) == reference


def test_ray_worker_builds_its_models_once_for_many_shards(local_ray, tmp_path: Path) -> None:
    """Ray unpickles the factory afresh for every task; the worker cache must still hit."""
    factory = RecordingFactory(tmp_path)
    RayExecutor().run(plan_shards(6, 1), factory, [torch.device("cpu")])
    shards = factory.lines("shards")
    assert sorted(name for name, _, _ in shards) == [s.name for s in plan_shards(6, 1)]
    processes = {pid for _, pid, _ in shards}
    assert sorted(pid for (pid,) in factory.lines("builds")) == sorted(processes)  # one build per process
    assert len({tag for _, _, tag in shards}) == len(processes) and os.getpid() not in {int(p) for p in processes}
    assert len(processes) < len(shards)  # at most two worker processes ran six shards


def job_of(tmp_path: Path) -> ShardJob:
    return ShardJob(small_params(), tmp_path, "f" * 64, WeightsStore(), Calibration())


def test_shard_job_cache_key_survives_pickling_and_differs_per_run(tmp_path: Path) -> None:
    job = job_of(tmp_path)
    assert pickle.loads(pickle.dumps(job)).cache_key == job.cache_key
    assert job_of(tmp_path).cache_key != job.cache_key


def test_shard_job_pickles_without_its_models(device_pass: DevicePass, tmp_path: Path) -> None:
    job = job_of(tmp_path)
    job.attach(device_pass, lambda n: None)
    copy = pickle.loads(pickle.dumps(job))
    assert copy._local == {} and copy.fingerprint == job.fingerprint and len(pickle.dumps(job)) < 100_000


def test_out_of_memory_halves_the_batch_instead_of_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    params = small_params(runtime={"batch_size": 8})
    fp = make_device_pass(params)
    real = DevicePass.compute
    sizes = []

    def limited(self, identities, variants, **rows):
        sizes.append(len(identities))
        if len(identities) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, identities, variants, **rows)

    monkeypatch.setattr(DevicePass, "compute", limited)
    table = shard_table_of(fp, params, ShardSpec(0, 0, 3))
    assert table.num_rows == 12 and fp.batch_size == 2  # 8 -> 4 -> 2, then every batch fits
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) == 2
    assert np.array_equal(table.column("identity").to_numpy(), np.repeat(np.arange(3), 4))
