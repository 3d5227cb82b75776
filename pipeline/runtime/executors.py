"""Executors run shard work units; each registers by name (`runtime.executor`).

`local` runs one worker per device: one device in this process; several as this process (the first device,
whose models the driver has built) plus one spawned process per further device, so nothing that holds the
interpreter lock in one device's loop (Python dispatch, numpy, encoding) waits for another's. Shards are
handed out from one queue as workers free up, so a fast device takes more of them.
`ray` runs one task per shard on a Ray cluster. Every shard's bytes depend on its spec alone, so
the executor and the number of devices never change the output.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from pipeline.registry import Registry
from pipeline.runtime.orphans import die_with_parent
from pipeline.runtime.progress import LOG_FORMAT
from pipeline.shards.candidates import ShardSpec

log = logging.getLogger(__name__)


class Worker(Protocol):
    """Computes and writes one shard per call; `flush` waits until everything it was given is written."""

    def __call__(self, spec: ShardSpec) -> None: ...

    def flush(self) -> None: ...


class WorkerFactory(Protocol):
    """Builds, once per device, the worker that computes and writes shards. `cache_key` names what it builds
    and survives pickling, so a Ray worker process that runs many shards builds its models once.
    `progress(n)` counts n images done on the driver's bar; `report_progress(send)` makes the workers this
    factory builds in another process send their counts through `send` instead."""

    cache_key: str

    def __call__(self, device: torch.device) -> Worker: ...

    def progress(self, images: int) -> None: ...

    def report_progress(self, send: Callable[[int], None]) -> None: ...


class Executor(Protocol):
    def run(self, specs: Sequence[ShardSpec], make_worker: WorkerFactory, devices: Sequence[torch.device]) -> None:
        """Compute and write every spec (any order, any device); return when all are written."""
        ...


class LocalExecutor:
    """One worker per device, the first in this process and one spawned process per further device; shards
    taken from one queue in order."""

    def __init__(self, **_: Any):
        pass

    def run(self, specs: Sequence[ShardSpec], make_worker: WorkerFactory, devices: Sequence[torch.device]) -> None:
        if not specs:
            return
        if len(devices) == 1:  # in the caller's thread, so Ctrl-C stops it at once
            pending = iter(specs)
            _drain(make_worker(devices[0]), lambda: next(pending, None), threading.Event())
            return
        ctx = multiprocessing.get_context("spawn")
        todo, events, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        for spec in specs:
            todo.put(spec)
        for _ in devices:  # one end mark per worker: a blocking get never mistakes a slow pipe for an empty queue
            todo.put(None)
        level = logging.getLogger().getEffectiveLevel()
        procs = {  # keyed by position: simulated CPU devices share a name
            f"#{i} {d}": ctx.Process(target=_device_process, args=(make_worker, d, f"#{i} {d}", todo, events, stop,
                                     level, os.getpid()), name=f"shards-{i}-{d}", daemon=True)
            for i, d in enumerate(devices[1:], 1)
        }  # fmt: skip
        for proc in procs.values():
            proc.start()
        errors: list[BaseException] = []
        listener = threading.Thread(target=_listen, args=(events, procs, make_worker, stop, errors), daemon=True)
        listener.start()
        try:
            _drain(make_worker(devices[0]), todo.get, stop)
        except BaseException as err:
            stop.set()
            errors.insert(0, err)
        finally:
            for proc in procs.values():
                proc.join()
            listener.join()
            todo.cancel_join_thread()  # shards left after a failure must not hold this process at exit
        if errors:
            raise errors[0]


def _drain(worker: Worker, take: Callable[[], ShardSpec | None], stop: Any) -> None:
    """Take shards until the end mark (or another worker failed); the last write is waited for."""
    try:
        while not stop.is_set() and (spec := take()) is not None:
            worker(spec)
    finally:
        worker.flush()


def _device_process(
    make_worker: WorkerFactory, device: torch.device, name: str, todo: Any, events: Any, stop: Any, log_level: int,
    parent: int,
) -> None:  # fmt: skip
    """A spawned process for one device (dies with the driver): build its worker, drain the queue, report
    progress and the outcome."""
    die_with_parent(parent)
    logging.basicConfig(level=log_level, format=LOG_FORMAT, stream=sys.stderr)
    try:
        make_worker.report_progress(lambda n: events.put(("images", name, n)))
        _drain(make_worker(device), todo.get, stop)
        events.put(("done", name, None))
    except BaseException as err:
        stop.set()
        events.put(("error", name, _portable(err)))


def _portable(err: BaseException) -> BaseException:
    """The error itself when it pickles (so the driver raises what the device raised), else its text."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


def _listen(
    events: Any, procs: dict[str, Any], make_worker: WorkerFactory, stop: Any, errors: list[BaseException]
) -> None:
    """In the driver: forward device processes' progress to the bar and collect their errors, until every one
    has reported its end (or died without one: killed, or out of host memory)."""
    running = set(procs)
    while running:
        try:
            kind, name, value = events.get(timeout=0.5)
        except queue.Empty:
            for name in [n for n in running if procs[n].exitcode is not None]:
                running.discard(name)
                errors.append(RuntimeError(f"the shard process for {name} exited with code {procs[name].exitcode} "
                                           "before it finished: see the log above"))  # fmt: skip
                stop.set()
            continue
        if kind == "images":
            make_worker.progress(value)
        else:
            running.discard(name)
            if kind == "error":
                errors.append(value)


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
