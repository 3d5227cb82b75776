"""Executors run shard work units; each registers by name (`runtime.executor`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from pipeline.registry import Registry
from pipeline.shards.candidates import ShardSpec

#: Builds, once per device, the function that computes and writes one shard.
WorkerFactory = Callable[[torch.device], Callable[[ShardSpec], dict]]


class Executor(Protocol):
    def run(
        self, specs: Sequence[ShardSpec], make_worker: WorkerFactory, devices: Sequence[torch.device]
    ) -> list[dict]:
        """Compute every spec; return their markers in spec order."""
        ...


class LocalExecutor:
    """One process, the first device; shards in order."""

    def run(
        self, specs: Sequence[ShardSpec], make_worker: WorkerFactory, devices: Sequence[torch.device]
    ) -> list[dict]:
        if not specs:
            return []
        worker = make_worker(devices[0])
        return [worker(spec) for spec in specs]


EXECUTORS: Registry[Executor] = Registry("executor")
EXECUTORS.register("local")(LocalExecutor)
