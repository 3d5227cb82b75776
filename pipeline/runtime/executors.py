"""Executors run shard work units; each registers by name (`runtime.executor`).

`local` runs one worker per device in this process (threads: the work is torch ops and encoders
that release the GIL), handing shards out dynamically, so a fast device takes more of them.
`ray` runs one task per shard on a Ray cluster. Every shard's bytes depend on its spec alone, so
the executor and the number of devices never change the output.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from pipeline.registry import Registry
from pipeline.shards.candidates import ShardSpec

log = logging.getLogger(__name__)


class Worker(Protocol):
    """Computes and writes one shard per call; `flush` waits until everything it was given is written."""

    def __call__(self, spec: ShardSpec) -> None: ...

    def flush(self) -> None: ...


class WorkerFactory(Protocol):
    """Builds, once per device, the worker that computes and writes shards. `cache_key` names what it builds
    and survives pickling, so a Ray worker process that runs many shards builds its models once."""

    cache_key: str

    def __call__(self, device: torch.device) -> Worker: ...


class Executor(Protocol):
    def run(self, specs: Sequence[ShardSpec], make_worker: WorkerFactory, devices: Sequence[torch.device]) -> None:
        """Compute and write every spec (any order, any device); return when all are written."""
        ...


class LocalExecutor:
    """One worker per device; shards taken from a shared queue in order."""

    def __init__(self, **_: Any):
        pass

    def run(self, specs: Sequence[ShardSpec], make_worker: WorkerFactory, devices: Sequence[torch.device]) -> None:
        if not specs:
            return
        todo: queue.Queue[ShardSpec] = queue.Queue()
        for spec in specs:
            todo.put(spec)
        stop = threading.Event()
        if len(devices) == 1:  # in the caller's thread, so Ctrl-C stops it at once
            _drain(make_worker(devices[0]), todo, stop)
            return
        errors: list[BaseException] = []

        def loop(device: torch.device) -> None:
            try:
                _drain(make_worker(device), todo, stop)
            except BaseException as err:  # re-raised in the caller's thread
                errors.append(err)
                stop.set()

        threads = [threading.Thread(target=loop, args=(d,), name=f"shards-{d}") for d in devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]


def _drain(worker: Worker, todo: queue.Queue[ShardSpec], stop: threading.Event) -> None:
    """Take shards from `todo` until it is empty (or another worker failed); the last write is waited for."""
    try:
        while not stop.is_set():
            try:
                spec = todo.get_nowait()
            except queue.Empty:
                return
            worker(spec)
    finally:
        worker.flush()


class RayExecutor:
    """One Ray task per shard (`runtime.gpus_per_task` GPUs each) on the cluster at `runtime.ray_address`.

    Workers build their models once per process (cached) and write shards themselves, so the
    output folder must be reachable from every node (a shared filesystem)."""

    def __init__(self, address: str | None = None, gpus_per_task: float = 0.0, cpus_per_task: float = 1.0, **_: Any):
        self.address, self.gpus, self.cpus = address, gpus_per_task, cpus_per_task

    def run(self, specs: Sequence[ShardSpec], make_worker: WorkerFactory, devices: Sequence[torch.device]) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("runtime.executor: ray needs the ray extra: uv sync --extra ray") from None
        if not specs:
            return
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        try:
            task = ray.remote(num_gpus=self.gpus, num_cpus=self.cpus)(_ray_shard)
            factory = ray.put(make_worker)
            ray.get([task.remote(factory, spec) for spec in specs])
        finally:
            if started:
                ray.shutdown()


_WORKERS: dict[str, Worker] = {}


def _ray_shard(make_worker: WorkerFactory, spec: ShardSpec) -> str:
    """Inside a Ray worker process: build the worker once per `cache_key` (Ray unpickles the factory afresh
    for every task, so its identity says nothing), then compute and write one shard (the task ends when its
    shard is on disk)."""
    key = make_worker.cache_key
    if key not in _WORKERS:
        _WORKERS.clear()
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        _WORKERS[key] = make_worker(device)
    worker = _WORKERS[key]
    worker(spec)
    worker.flush()
    return spec.name


EXECUTORS: Registry[Executor] = Registry("executor")
EXECUTORS.register("local")(LocalExecutor)
EXECUTORS.register("ray")(RayExecutor)
