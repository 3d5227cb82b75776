"""The generate stage's driver: plan the shards, keep every valid one, compute the rest on the executor, and
write the candidate manifest."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.faces.attributes import attribute_catalog
from pipeline.generate.version import shard_fingerprint
from pipeline.generate.worker import ShardJob, build_device_pass
from pipeline.identities.calibration import Calibration
from pipeline.runtime.device import apply_threads, resolve_devices
from pipeline.runtime.executors import EXECUTORS
from pipeline.runtime.progress import progress
from pipeline.shards.candidates import MANIFEST, ShardSpec, ShardStore, plan_shards
from pipeline.shards.io import write_json_atomic
from pipeline.weights import WeightsStore

log = logging.getLogger(__name__)


def run_generate(
    params: Params, out_dir: Path, weights: WeightsStore | None = None, calibration: Path | None = None
) -> dict[str, Any]:
    """Compute every missing or invalid shard, then write the candidate manifest; returns it.

    Workers write shards to `runtime.output_url` when set (any fsspec URL that every worker can
    reach), else straight into `out_dir`; finished shards are then copied into `out_dir`, which
    is what DVC tracks and the later stages read."""
    out_dir.mkdir(parents=True, exist_ok=True)
    store, local = ShardStore(params.runtime.output_url or out_dir), ShardStore(out_dir)
    stores = list({store.url: store, local.url: local}.values())  # one when workers write into out_dir
    for where in stores:
        if removed := where.remove_stale_temporaries():
            log.info("removed %d temporary files left by an interrupted run in %s", removed, where.url)
    devices = resolve_devices(params.runtime)
    apply_threads(params.runtime)
    weights, fitted = weights or WeightsStore(), Calibration.load(calibration)
    first = build_device_pass(params, devices[0], weights, fitted)
    fingerprint = shard_fingerprint(params, fitted.fingerprint_json(list(params.variation.edits)), first.models.shaping)
    specs = plan_shards(params.identities.count, params.identities.shard_size)
    todo = _shards_to_compute(stores, store, specs, fingerprint)
    log.info("generate: %d shards planned, %d to compute in %s", len(specs), len(todo), store.url)
    per_identity = params.identities.variants_per_identity
    bar = progress(sum(s.stop - s.start for s in todo) * per_identity, "generate")
    job = ShardJob(params, store.url, fingerprint, weights, fitted)
    job.attach(first, bar.update)
    r = params.runtime
    options = {"address": r.ray_address, "gpus_per_task": r.gpus_per_task, "cpus_per_task": r.cpus_per_task}
    with bar:
        EXECUTORS.create(r.executor, **options).run(todo, job, devices)
    if store.url != local.url:
        for spec in specs:
            store.fetch(spec, out_dir)
    markers = [local.read_marker(s) for s in specs]
    catalog = attribute_catalog(params.attributes)
    manifest = {
        **first.models.info(params.generator.model),
        "fingerprint": fingerprint,
        "identities": params.identities.count,
        "variants_per_identity": per_identity,
        "rows": sum(m["rows"] for m in markers),
        "attributes": {n: {"level": i.level, "classes": list(i.classes)} for n, i in catalog.items()},
        "shards": markers,
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def _shards_to_compute(
    stores: list[ShardStore], store: ShardStore, specs: list[ShardSpec], fingerprint: str
) -> list[ShardSpec]:
    """Drop shards outside the plan (identities.count was lowered); the planned ones that are missing or
    invalid in `store`, saying why for those that were there."""
    for where in stores:
        for name in where.remove_unplanned({s.name for s in specs}):
            log.info("removed %s (outside identities.count)", name)
    todo = []
    for spec in specs:
        problem = store.shard_problem(spec, fingerprint)
        if problem is not None:
            if problem != "not done":
                log.warning("%s: recomputing (%s)", spec.name, problem)
            todo.append(spec)
    return todo
