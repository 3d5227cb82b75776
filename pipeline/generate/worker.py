"""Shard work: the job an executor runs on each device, and the worker that computes and writes shards."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.config import Params
from pipeline.generate.device_pass import DevicePass
from pipeline.generate.models import DeviceModels
from pipeline.generate.records import encode_images, shard_table
from pipeline.identities.calibration import Calibration
from pipeline.identities.plans import PlanConfig, constructed, plain, steered
from pipeline.identities.steering import ShardSteerer
from pipeline.runtime.device import apply_threads
from pipeline.shards.candidates import ShardSpec, ShardStore
from pipeline.shards.columns import Columns, candidate_order, concat_columns
from pipeline.shards.encode import BoundedPool, default_workers
from pipeline.weights import WeightsStore


def plan_config(params: Params) -> PlanConfig:
    i, v = params.identities, params.variation
    return PlanConfig(
        params.seed, i.variants_per_identity, i.separation, i.separation_tries, dict(v.edits), v.edit_steps,
        v.min_identity_cosine,
    )  # fmt: skip


def shard_parts(device_pass: DevicePass, spec: ShardSpec, cfg: PlanConfig) -> Iterator[Columns]:
    """A shard's candidate columns as parts, from the latent plan its params call for."""
    calibration, render, latents = device_pass.models.calibration, device_pass.render, device_pass.latents
    identities = np.arange(spec.start, spec.stop, dtype=np.int64)
    if calibration.steer_plan is not None:
        steerer = ShardSteerer(calibration.steer_plan, calibration.directions)
        return steered(render, latents, spec.start, spec.stop, steerer, cfg, calibration.regressions)
    if cfg.separation is None and not cfg.edits:
        return plain(render, identities, cfg.variants_per_identity)
    return constructed(render, latents, identities, cfg, calibration.regressions)


def compute_shard(
    device_pass: DevicePass,
    spec: ShardSpec,
    cfg: PlanConfig,
    fingerprint: str,
    encoders: BoundedPool,
    on_batch: Callable[[int], None],
) -> pa.Table:
    """All candidates of one shard as an Arrow table with the candidate schema: each part of the plan is
    encoded on the CPU threads while the device renders the next."""
    jpeg = device_pass.models.jpeg
    done = []
    for columns in encoders.map(lambda c: encode_images(c, jpeg), shard_parts(device_pass, spec, cfg)):
        done.append(columns)
        on_batch(len(columns["key"]))
    sha256 = device_pass.models.generator.sha256
    return shard_table(candidate_order(concat_columns(done)), sha256, fingerprint)


def build_device_pass(
    params: Params, device: torch.device, weights: WeightsStore, calibration: Calibration
) -> DevicePass:
    return DevicePass(params, DeviceModels(params, device, weights, calibration))


class ShardJob:
    """Builds, per device, the worker that computes and writes shards; picklable, so a Ray worker can
    rebuild it from its fields. Within a process the first DevicePass and the progress bar are reused
    (not pickled); `cache_key`, one per run, lets a Ray worker process reuse what it built for every
    later shard of the run."""

    def __init__(
        self, params: Params, store_url: str | Path, fingerprint: str, weights: WeightsStore, calibration: Calibration
    ):
        self.params, self.store_url, self.fingerprint = params, str(store_url), fingerprint
        self.weights, self.calibration = weights, calibration
        self.cache_key = uuid.uuid4().hex
        self._local: dict[str, Any] = {}

    def attach(self, device_pass: DevicePass, on_batch: Callable[[int], None]) -> None:
        """The driver's first DevicePass (reused for its device) and its progress bar's update."""
        lock = threading.Lock()  # device 0's loop and the device processes' listener both count

        def count(images: int) -> None:
            with lock:
                on_batch(images)

        self._local = {"device_pass": device_pass, "on_batch": count}

    def progress(self, images: int) -> None:
        self._local.get("on_batch", _ignore)(images)

    def report_progress(self, send: Callable[[int], None]) -> None:
        self._local["on_batch"] = send

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_local"} | {"_local": {}}

    def __call__(self, device: torch.device) -> ShardWorker:
        apply_threads(self.params.runtime)  # again in a Ray worker, which starts with one thread
        reuse = self._local.pop("device_pass", None)  # one worker takes it; every other device builds its own
        if reuse is None or reuse.device != device:
            reuse = build_device_pass(self.params, device, self.weights, self.calibration)
        return ShardWorker(reuse, self, self._local.get("on_batch", _ignore))


def _ignore(images: int) -> None:
    """Progress nobody watches (a Ray worker's)."""


class ShardWorker:
    """Computes shards on one device; each batch is encoded on CPU threads while the device computes the next,
    and each shard's Parquet is written on a background thread while the next shard is computed. At most one
    finished table waits, so memory does not grow with the shards; `flush` waits for the last write (and
    raises its error)."""

    def __init__(self, device_pass: DevicePass, job: ShardJob, on_batch: Callable[[int], None]):
        self.device_pass, self.job, self.on_batch = device_pass, job, on_batch
        self.cfg = plan_config(job.params)
        self.store = ShardStore(job.store_url)
        workers = job.params.runtime.encode_workers
        self.encoders = BoundedPool(default_workers() if workers == "auto" else workers)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: Future | None = None

    def table(self, spec: ShardSpec) -> pa.Table:
        return compute_shard(self.device_pass, spec, self.cfg, self.job.fingerprint, self.encoders, self.on_batch)

    def __call__(self, spec: ShardSpec) -> None:
        table = self.table(spec)
        self.flush()
        self._pending = self._writer.submit(self._write, spec, table)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write(self, spec: ShardSpec, table: pa.Table) -> None:
        found = int((table.column("det_prob").to_numpy() > 0).sum())
        stats = {"samples": table.num_rows, "faces_found": found}
        self.store.write_shard(spec, table, self.job.fingerprint, stats)
