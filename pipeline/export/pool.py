"""The export's process pool: spawned workers shared by both passes, or this process for one worker."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

from pipeline.runtime.orphans import die_with_parent
from pipeline.runtime.progress import progress

T = TypeVar("T")
R = TypeVar("R")


def export_workers(setting: int | str) -> int:
    return len(os.sched_getaffinity(0)) if setting == "auto" else int(setting)


class WorkerPool:
    """One spawned process pool for both export passes (workers import their libraries once), or this
    process when one worker is asked for; `map` returns results in task order with a progress bar."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> WorkerPool:
        if self.workers > 1:
            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                initargs=(os.getpid(),),
            )  # fmt: skip
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def submit(self, fn: Callable[[T], R], task: T) -> Future[R]:
        """Run one task on the pool (or here, now, without one)."""
        if self.pool is not None:
            return self.pool.submit(fn, task)
        done: Future[R] = Future()
        done.set_result(fn(task))
        return done

    def map(self, fn: Callable[[T], R], tasks: list[T], desc: str) -> list[R]:
        bar = progress(len(tasks), desc, unit="shard")
        results = []
        with bar:
            for result in self.pool.map(fn, tasks) if self.pool is not None and len(tasks) > 1 else map(fn, tasks):
                results.append(result)
                bar.update()
        return results
