"""The generate stage's library: generator -> detect -> align -> embed -> score, one shard at a time."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.calibrate import directions_to_json, load_directions, load_regressions, load_steer_plan
from pipeline.config import Params
from pipeline.errors import ConfigError, PipelineError
from pipeline.faces.analyze import FaceAnalyzer, FaceResult
from pipeline.faces.attributes import AttributeAnalyzer, AttributeBatch, attribute_catalog
from pipeline.fingerprint import code_fingerprint
from pipeline.generators import load_models
from pipeline.generators.synthesis import synthesize, to_uint8
from pipeline.identities.sampling import check_variation, input_transforms, make_ws, sample_seed
from pipeline.identities.separation import separate
from pipeline.identities.variation import cosines, edit_moves, edit_scales, edit_targets, shrink
from pipeline.runtime.device import (
    apply_threads,
    autocast,
    batch_size,
    effective_precision,
    probe_batch_size,
    resolve_devices,
    synthesis_batch,
)
from pipeline.runtime.executors import EXECUTORS
from pipeline.runtime.progress import progress
from pipeline.shards.candidates import (
    MANIFEST,
    ShardSpec,
    ShardStore,
    candidate_schema,
    plan_shards,
    sample_key,
)
from pipeline.shards.encode import JPEG_ENCODERS, BoundedPool, default_workers, encode, resolve_jpeg_encoder
from pipeline.shards.io import write_json_atomic
from pipeline.steering import ShardSteerer

log = logging.getLogger(__name__)

#: Seed of the fixed batch that centres a randomly initialised embedder (independent of params.seed).
CALIBRATION_SEED = 2**31 - 1
CALIBRATION_SAMPLES = 64
#: Keys of the host arrays that `FacePass.compute` hands to `FacePass.encode`.
HOST_PIXELS, HOST_CROPS = "_pixels", "_crops"
#: Params sections that shape a candidate shard's bytes (identities.count only decides how many shards).
SHAPING_SECTIONS = (
    "seed", "generator", "identities.images_per_identity", "identities.oversample",
    "identities.shard_size", "identities.separation", "identities.separation_tries", "variation", "detect",
    "align", "embed", "attributes",
)  # fmt: skip


@dataclass
class SynthBatch:
    """One batch after synthesis: who, with which seeds and latents, and the images (NaN/Inf made finite)."""

    identities: np.ndarray
    variants: np.ndarray
    seeds: list[int]
    ws: torch.Tensor
    raw: torch.Tensor  # [B, 3, H, W] float, the generator's output

    def __post_init__(self) -> None:
        self.finite = torch.isfinite(self.raw).flatten(1).all(1)
        self.clean = torch.nan_to_num(self.raw, nan=0.0, posinf=1.0, neginf=-1.0)
        self.pixels = to_uint8(self.clean).permute(0, 2, 3, 1)  # [B, H, W, 3] uint8 on the device


class FacePass:
    """The models for one device, and the pass that turns (identity, variant) pairs into candidate columns."""

    def __init__(
        self,
        params: Params,
        device: torch.device,
        weights_dir: Path | None = None,
        lock_path: Path | None = None,
        calibration: Path | None = None,
    ):
        self.params = params
        self.device = device
        self.precision = effective_precision(params.runtime, device)
        self.batch_size = batch_size(params.runtime, device)
        self.jpeg_encoder = resolve_jpeg_encoder(params.runtime.jpeg_encoder, device)
        self.jpeg = JPEG_ENCODERS.create(self.jpeg_encoder, device=device)
        g = params.generator
        self.generator, disc = load_models(
            g.model, device, resolution=g.resolution, weights_dir=weights_dir, lock_path=lock_path
        )
        problems = check_variation(self.generator, params)
        if problems:
            raise ConfigError(problems)
        self.discriminator = self._per_sample(disc) if g.disc_score else None
        self.faces = FaceAnalyzer(params, device, self.generator.img_resolution, weights_dir, lock_path)
        self.directions = load_directions(calibration)
        self.steer_plan = load_steer_plan(calibration)
        self.regressions = load_regressions(calibration)
        missing = [a for a in params.variation.edits if a not in self.regressions]
        if missing:
            raise PipelineError(
                f"variation.edits: no calibrated direction for {', '.join(missing)} in {calibration}/ "
                "(run the calibrate stage: dvc repro calibrate)"
            )
        if params.balance.mode == "steer" and self.steer_plan is None:
            raise PipelineError(f"balance.mode: steer needs the calibrate stage's {calibration}/steer.json (dvc repro)")
        self.attributes = AttributeAnalyzer(
            params, self.generator, device, weights_dir=weights_dir, lock_path=lock_path, directions=self.directions
        )
        if params.runtime.compile:
            self.generator.synthesis = torch.compile(self.generator.synthesis)
        self.synthesis_batch = synthesis_batch(params.runtime, device, self.generator, self.batch_size)
        workers = params.runtime.encode_workers
        self.encoders = BoundedPool(default_workers() if workers == "auto" else workers)
        if self.faces.needs_calibration:
            self._calibrate()
        if params.runtime.batch_size == "auto":
            self.batch_size = probe_batch_size(self._probe, device)
            self.synthesis_batch = synthesis_batch(params.runtime, device, self.generator, self.batch_size)

    def _probe(self, n: int) -> None:
        """One batch of n candidates of identity 0, for measuring memory (results are discarded)."""
        variants = np.arange(n, dtype=np.int64) % self.params.identities.variants_per_identity
        self.compute(np.zeros(n, np.int64), variants)

    @staticmethod
    def _per_sample(disc: torch.nn.Module | None) -> torch.nn.Module | None:
        """The pickle's D with minibatch-std over groups of one, so each sample's score is its own."""
        if disc is None:
            log.info("generator has no discriminator: q_disc stays empty")
            return None
        disc.b4.mbstd.group_size = 1
        return disc

    @property
    def info(self) -> dict[str, Any]:
        g = self.generator
        return {
            "generator": {
                "model": self.params.generator.model,
                "label": g.label,
                "license": g.license,
                "license_id": g.license_id,
                "sha256": g.sha256,
                "resolution": g.img_resolution,
                "num_ws": g.num_ws,
            },
            "embedder_weights": self.faces.embedder.weights_name,
            "precision": self.precision,
            "jpeg_encoder": self.jpeg_encoder,
        }

    def _calibrate(self) -> None:
        ids = np.arange(CALIBRATION_SAMPLES, dtype=np.int64)
        calib = self.params.model_copy(update={"seed": CALIBRATION_SEED})
        ws = make_ws(self.generator, calib, ids, np.zeros_like(ids), self.device)
        self.faces.calibrate(to_uint8(self._synthesize(ws)).permute(0, 2, 3, 1))

    def _synthesize(
        self, ws: torch.Tensor, seeds: list[int] | None = None, transforms: np.ndarray | None = None
    ) -> torch.Tensor:
        g = self.params.generator
        return synthesize(self.generator, ws, self.precision, g.noise_mode, seeds, transforms, self.synthesis_batch)

    def _synthesis(self, identities: np.ndarray, variants: np.ndarray, **rows: np.ndarray | None) -> SynthBatch:
        """Step 1: latents and images on the device; `rows` are make_ws's per-sample arrays (offsets steer the
        identities' w, tries pick their separation try, edits move the variants)."""
        ws = make_ws(self.generator, self.params, identities, variants, self.device, **rows)
        seeds = [sample_seed(self.params.seed, int(i), int(v)) for i, v in zip(identities, variants, strict=True)]
        raw = self._synthesize(ws, seeds, input_transforms(self.params, identities, variants))
        return SynthBatch(identities, variants, seeds, ws, raw)

    def _scores(self, batch: SynthBatch) -> dict[str, torch.Tensor]:
        """Step 2: whole-image scores on the device: q_finite, and q_disc (the discriminator, in the stage's
        precision) when `generator.disc_score` asks for it, else NaN."""
        scores = {"q_finite": batch.finite.to(torch.float32)}
        if self.discriminator is None:
            scores["q_disc"] = torch.full_like(scores["q_finite"], torch.nan)
            return scores
        with torch.no_grad(), autocast("bf16" if self.precision == "bf16" else "fp32", self.device):
            logits = self.discriminator(batch.clean, None, force_fp32=self.precision != "fp16")
        scores["q_disc"] = logits.float().flatten()
        return scores

    def compute(self, identities: np.ndarray, variants: np.ndarray, **rows: np.ndarray | None) -> dict[str, Any]:
        """The device half of one batch of (identity, variant) pairs: synthesis -> scores -> faces -> attributes
        -> table columns (every candidate column but the encoded images, plus the host arrays `encode` turns
        into them). The per-image columns reach the host in one copy, the crops in another, the frames in a
        third when the CPU encodes them."""
        batch = self._synthesis(identities, variants, **rows)
        faces = self.faces(batch.pixels, extra=self._scores(batch))
        attributes = self.attributes(AttributeBatch(batch.pixels, faces.landmarks, faces.found, batch.ws))
        return self._table(batch, faces, attributes)

    def _table(self, batch: SynthBatch, faces: FaceResult, attributes: dict[str, np.ndarray]) -> dict[str, Any]:
        """Step 5: the batch's candidate columns in schema order (images still to encode)."""
        ids, var = batch.identities, batch.variants
        columns = {
            "key": [sample_key(int(i), int(v)) for i, v in zip(ids, var, strict=True)],
            "identity": ids.astype(np.int64),
            "variant": var.astype(np.int16),
            "seed": np.array(batch.seeds, np.int64),
            "psi": np.full(len(ids), self.params.generator.truncation_psi, np.float32),
            **faces.columns,
            **faces.extra,
            **attributes,
            HOST_CROPS: faces.crops,
        }
        if self.jpeg.device_side:
            columns["image"] = self.jpeg(batch.pixels)
        else:
            columns[HOST_PIXELS] = batch.pixels.cpu().numpy()
        return columns

    def encode(self, columns: dict[str, Any]) -> dict[str, Any]:
        """The CPU half (runs on an encoder thread): JPEG of the full image unless the device made it,
        lossless PNG of the aligned crop."""
        pixels = columns.pop(HOST_PIXELS, None)
        if pixels is not None:
            columns["image"] = self.jpeg(pixels)
        columns["aligned"] = [encode(a, "png") for a in columns.pop(HOST_CROPS)]
        return columns

    def __call__(self, identities: np.ndarray, variants: np.ndarray, **rows: np.ndarray | None) -> dict[str, Any]:
        """Candidate columns for one batch of (identity, variant) pairs, encoded in this thread."""
        return self.encode(self.compute(identities, variants, **rows))

    def fitted_batch(self, identities: np.ndarray, variants: np.ndarray, **rows: np.ndarray | None) -> dict[str, Any]:
        """`compute(...)` on as many leading pairs as fit in device memory: on out-of-memory the batch size is
        halved for the rest of the run (down to 1, then the error stands). Callers continue after what ran."""
        while True:
            try:
                return self.compute(identities, variants, **rows)
            except torch.OutOfMemoryError:
                if len(identities) <= 1:
                    raise
                self.batch_size = max(1, len(identities) // 2)
                log.warning("out of device memory: batch size lowered to %d", self.batch_size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                identities, variants = identities[: self.batch_size], variants[: self.batch_size]
                rows = _rows(rows, slice(0, self.batch_size))

    def _device_rows(self, ids: np.ndarray, var: np.ndarray, **rows: np.ndarray | None) -> Iterator[dict[str, Any]]:
        """The device halves of all pairs, batch by batch (not encoded)."""
        lo = 0
        while lo < len(ids):
            part = slice(lo, lo + self.batch_size)
            columns = self.fitted_batch(ids[part], var[part], **_rows(rows, part))
            lo += len(columns["key"])
            yield columns

    def _pairs(self, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(identity, variant) for every candidate of `identities`, identity-major."""
        variants_per = self.params.identities.variants_per_identity
        return np.repeat(identities, variants_per), np.tile(np.arange(variants_per, dtype=np.int64), len(identities))

    def _batches(
        self, ids: np.ndarray, var: np.ndarray, on_batch: Callable[[int], None], **rows: np.ndarray | None
    ) -> list[dict[str, Any]]:
        """Candidate columns for all pairs, in batches of `batch_size` (which may shrink on out-of-memory).
        Each batch is encoded on the CPU workers while the device computes the next ones."""
        return self._encoded(self._device_rows(ids, var, **rows), on_batch)

    def _encoded(self, parts: Iterator[dict[str, Any]], on_batch: Callable[[int], None]) -> list[dict[str, Any]]:
        """Each part encoded on the CPU workers while the device computes the next ones."""
        done = []
        for columns in self.encoders.map(self.encode, parts):
            done.append(columns)
            on_batch(len(columns["key"]))
        return done

    def shard_table(self, spec: ShardSpec, fingerprint: str, on_batch: Callable[[int], None]) -> pa.Table:
        """All candidates of one shard as an Arrow table with the candidate schema."""
        identities = np.arange(spec.start, spec.stop, dtype=np.int64)
        ids, var = self._pairs(identities)
        if self.steer_plan is not None:
            parts = self._steered_parts(spec, on_batch)
        elif self.params.identities.separation is None and not self.params.variation.edits:
            parts = self._batches(ids, var, on_batch)
        else:
            parts = [_ordered(_concat_columns(self._encoded(self._constructed(identities), on_batch)))]
        columns = _concat_columns(parts)
        columns["model_sha256"] = [self.generator.sha256] * len(ids)
        columns["params_fingerprint"] = [fingerprint] * len(ids)
        extra_fields = [_attribute_field(k, v) for k, v in columns.items() if k.startswith(EXTRA_PREFIXES)]
        schema = candidate_schema(extra_fields)
        return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)

    def _constructed(self, identities: np.ndarray, offsets: np.ndarray | None = None) -> Iterator[dict[str, Any]]:
        """A shard's candidates with separation by construction and identity-preserving edits, as parts of
        final rows (any order; the caller orders them): first the canonicals of the separated identities, then
        every variant at the largest scale of its edit that keeps it the same person. `offsets` [n, w_dim]:
        steering's moves of the identities (never with separation)."""
        p = self.params
        n = len(identities)
        steer = {} if offsets is None else {"offsets": offsets}
        if p.identities.separation is None:
            tries = np.zeros(n, np.int64)
            canon = _concat_columns(list(self._device_rows(identities, np.zeros(n, np.int64), tries=tries, **steer)))
            sep = {"sep_try": tries.astype(np.int32)}
        else:
            renders: list[dict[str, Any]] = []

            def render(pairs: list[tuple[int, int]]) -> np.ndarray:
                slots = np.array([k for k, _ in pairs], np.int64)
                attempt = np.array([t for _, t in pairs], np.int64)
                new = list(self._device_rows(identities[slots], np.zeros(len(slots), np.int64), tries=attempt))
                renders.extend(new)
                return np.stack(_concat([c["embedding"] for c in new])).astype(np.float32)

            chosen = separate(n, p.identities.separation_tries, p.identities.separation, render)
            canon, tries = _select(_concat_columns(renders), chosen.rows), chosen.tries
            sep = {
                "sep_try": tries.astype(np.int32),
                "sep_ok": chosen.separated,
                "sep_cosine": np.where(np.isfinite(chosen.max_cosine), chosen.max_cosine, np.nan).astype(np.float32),
            }
            log.debug("separation: %d renders for %d identities", chosen.renders, n)
        canonical_embeddings = np.stack(canon["embedding"])
        canon |= sep
        if p.variation.edits:
            canon |= self._edit_columns(np.zeros(n), np.ones(n), {a: np.full(n, np.nan) for a in p.variation.edits})
        yield canon
        variants_per = p.identities.variants_per_identity
        vids = np.repeat(identities, variants_per - 1)
        vvar = np.tile(np.arange(1, variants_per, dtype=np.int64), n)
        slot = np.repeat(np.arange(n), variants_per - 1)
        vsep = {k: v[slot] for k, v in sep.items()}
        vsteer = {} if offsets is None else {"offsets": offsets[slot]}
        if not p.variation.edits:
            lo = 0
            for columns in self._device_rows(vids, vvar, tries=tries[slot], **vsteer):
                rows = np.arange(lo, lo + len(columns["key"]))
                lo += len(rows)
                yield columns | {k: v[rows] for k, v in vsep.items()}
            return
        w0 = make_ws(self.generator, p, identities, np.zeros(n, np.int64), self.device, tries=tries, **steer)
        w0 = w0[:, p.variation.edit_layers(self.generator.num_ws)[0]].float().cpu().numpy()
        targets = edit_targets(p.seed, dict(p.variation.edits), vids, vvar, variants_per)
        moves = edit_moves(w0[slot], targets, self.regressions)

        def evaluate(rows: np.ndarray, scale: float) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
            lo = 0
            moved = {k: v[rows] for k, v in vsteer.items()}
            for columns in self._device_rows(
                vids[rows], vvar[rows], tries=tries[slot[rows]], edits=moves[rows] * scale, **moved
            ):
                batch = rows[lo : lo + len(columns["key"])]
                lo += len(batch)
                yield batch, cosines(np.stack(columns["embedding"]), canonical_embeddings[slot[batch]]), columns

        steps = edit_scales(p.variation.edit_steps)
        for rows, scale, cos, columns, kept in shrink(len(vids), steps, p.variation.min_identity_cosine, evaluate):
            extra = {k: v[rows] for k, v in vsep.items()} | self._edit_columns(
                np.full(len(rows), scale), cos, {a: t[rows] for a, t in targets.items()}
            )
            yield _select(columns, kept) | extra

    @staticmethod
    def _edit_columns(scale: np.ndarray, cosine: np.ndarray, targets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """edit_scale (the share of the move kept: 1, 1/2, ... 0), edit_cosine (embedding cosine to the
        canonical; 1 for it), edit_<attribute> (the target drawn; NaN for canonicals)."""
        columns = {"edit_scale": np.asarray(scale, np.float32), "edit_cosine": np.asarray(cosine, np.float32)}
        return columns | {f"edit_{a}": np.asarray(t, np.float32) for a, t in targets.items()}

    def _steered_parts(self, spec: ShardSpec, on_batch: Callable[[int], None]) -> list[dict[str, Any]]:
        """Identities in chunks of `steer_chunk`: each chunk is steered toward the bins the shard lacks so far,
        then the estimators' labels of its canonical images (variant 0) update the shard's counts.
        State is per shard, so a shard's bytes never depend on other shards or on the batch size."""
        assert self.steer_plan is not None
        steerer = ShardSteerer(self.steer_plan, self.directions)
        variants_per = self.params.identities.variants_per_identity
        parts: list[dict[str, Any]] = []
        for first in range(spec.start, spec.stop, steerer.chunk):
            chunk = np.arange(first, min(first + steerer.chunk, spec.stop), dtype=np.int64)
            w0 = make_ws(self.generator, self.params, chunk, np.zeros_like(chunk), self.device)[:, 0]
            offsets, targets = steerer.assign(w0.float().cpu().numpy())
            ids, var = self._pairs(chunk)
            if self.params.variation.edits:
                columns = _ordered(_concat_columns(self._encoded(self._constructed(chunk, offsets), on_batch)))
            else:
                columns = _concat_columns(
                    self._batches(ids, var, on_batch, offsets=np.repeat(offsets, variants_per, 0))
                )
            canonical = np.asarray(columns["variant"]) == 0
            steerer.verify({a: np.asarray(columns[f"attr_{a}"])[canonical] for a in targets})
            for a, t in targets.items():
                columns[f"steer_{a}"] = np.repeat(np.asarray(t, dtype=object), variants_per).astype(str)
            columns["steer_shift"] = np.repeat(np.linalg.norm(offsets, axis=1), variants_per).astype(np.float32)
            parts.append(columns)
        return parts


def _concat(chunks: list[Any]) -> Any:
    if isinstance(chunks[0], np.ndarray):
        return np.concatenate(chunks)
    return [x for chunk in chunks for x in chunk]


def _concat_columns(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: _concat([p[k] for p in parts]) for k in parts[0]}


def _rows(rows: dict[str, np.ndarray | None], part: slice) -> dict[str, np.ndarray | None]:
    """A slice of make_ws's per-sample arrays (None stays None)."""
    return {k: None if v is None else v[part] for k, v in rows.items()}


def _select(columns: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """The given rows of every column (arrays and lists)."""
    return {k: v[rows] if isinstance(v, np.ndarray) else [v[i] for i in rows] for k, v in columns.items()}


def _ordered(columns: dict[str, Any]) -> dict[str, Any]:
    """Rows in candidate order: identity-major, then variant."""
    return _select(columns, np.lexsort((np.asarray(columns["variant"]), np.asarray(columns["identity"]))))


#: Columns beyond DESIGN §7's fixed ones: attribute estimates, steering, separation and edit records.
EXTRA_PREFIXES = ("attr_", "steer_", "sep_", "edit_")


def _attribute_field(name: str, values: Any) -> pa.Field:
    arr = np.asarray(values)
    if arr.dtype.kind in "OUS":
        return pa.field(name, pa.string())
    if arr.dtype.kind == "b":
        return pa.field(name, pa.bool_())
    return pa.field(name, pa.int32() if arr.dtype.kind in "iu" else pa.float32())


def shard_fingerprint(params: Params, face_pass: FacePass) -> str:
    """What a shard's bytes depend on besides its identity range: params, weights, precision, code."""
    steering = [
        face_pass.steer_plan,
        directions_to_json(face_pass.directions),
        [face_pass.regressions[a].to_json() for a in sorted(params.variation.edits)],
    ]
    parts = [
        params.section_fingerprint(*SHAPING_SECTIONS),
        json.dumps(steering, sort_keys=True),
        face_pass.generator.sha256,
        face_pass.faces.embedder.weights_name,
        face_pass.precision,
        face_pass.jpeg_encoder,
        code_fingerprint(__file__),  # every library file this module can run
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def run_generate(
    params: Params,
    out_dir: Path,
    weights_dir: Path | None = None,
    lock_path: Path | None = None,
    calibration: Path | None = None,
) -> dict[str, Any]:
    """Compute every missing or invalid shard, then write the candidate manifest; returns it.

    Workers write shards to `runtime.output_url` when set (any fsspec URL that every worker can
    reach), else straight into `out_dir`; finished shards are then copied into `out_dir`, which
    is what DVC tracks and the later stages read."""
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ShardStore(params.runtime.output_url or out_dir)
    local = ShardStore(out_dir)
    stores = list({store.url: store, local.url: local}.values())  # one when workers write into out_dir
    for where in stores:
        if removed := where.remove_stale_temporaries():
            log.info("removed %d temporary files left by an interrupted run in %s", removed, where.url)
    devices = resolve_devices(params.runtime)
    apply_threads(params.runtime)
    first = FacePass(params, devices[0], weights_dir, lock_path, calibration)
    fingerprint = shard_fingerprint(params, first)
    specs = plan_shards(params.identities.count, params.identities.shard_size)
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
    log.info("generate: %d shards planned, %d to compute in %s", len(specs), len(todo), store.url)
    per_identity = params.identities.variants_per_identity
    bar = progress(sum(s.stop - s.start for s in todo) * per_identity, "generate")

    job = ShardJob(params, store.url, fingerprint, weights_dir, lock_path, calibration)
    job.attach(first, bar.update)
    with bar:
        EXECUTORS.create(params.runtime.executor, **executor_options(params)).run(todo, job, devices)
    if store.url != local.url:
        for spec in specs:
            store.fetch(spec, out_dir)
    markers = [local.read_marker(s) for s in specs]
    manifest = {
        **first.info,
        "fingerprint": fingerprint,
        "identities": params.identities.count,
        "variants_per_identity": per_identity,
        "rows": sum(m["rows"] for m in markers),
        "attributes": {n: {"level": i.level, "classes": list(i.classes)} for n, i in attribute_catalog(params).items()},
        "shards": markers,
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


class ShardJob:
    """Builds, per device, the worker that computes and writes shards; picklable, so a Ray worker can
    rebuild it from its fields. Within a process the first FacePass and the progress bar are reused
    (not pickled); `cache_key`, one per run, lets a Ray worker process reuse what it built for every
    later shard of the run."""

    def __init__(
        self,
        params: Params,
        store_url: str | Path,
        fingerprint: str,
        weights_dir: Path | None = None,
        lock_path: Path | None = None,
        calibration: Path | None = None,
    ):
        self.params, self.store_url, self.fingerprint = params, str(store_url), fingerprint
        self.weights_dir, self.lock_path, self.calibration = weights_dir, lock_path, calibration
        self.cache_key = uuid.uuid4().hex
        self._local: dict[str, Any] = {}

    def attach(self, face_pass: FacePass, on_batch: Callable[[int], None]) -> None:
        """The driver's first FacePass (reused for its device) and its progress bar's update."""
        lock = threading.Lock()  # device 0's loop and the device processes' listener both count

        def count(images: int) -> None:
            with lock:
                on_batch(images)

        self._local = {"face_pass": face_pass, "on_batch": count}

    def progress(self, images: int) -> None:
        self._local.get("on_batch", _ignore)(images)

    def report_progress(self, send: Callable[[int], None]) -> None:
        self._local["on_batch"] = send

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_local"} | {"_local": {}}

    def __call__(self, device: torch.device) -> ShardWorker:
        apply_threads(self.params.runtime)  # again in a Ray worker, which starts with one thread
        reuse = self._local.pop("face_pass", None)  # one worker takes it; every other device builds its own
        if reuse is None or reuse.device != device:
            reuse = FacePass(self.params, device, self.weights_dir, self.lock_path, self.calibration)
        return ShardWorker(reuse, self, self._local.get("on_batch", _ignore))


def _ignore(images: int) -> None:
    """Progress nobody watches (a Ray worker's)."""


class ShardWorker:
    """Computes shards on one device; each shard's Parquet is written on a background thread while the
    next shard is computed. At most one finished table waits, so memory does not grow with the shards;
    `flush` waits for the last write (and raises its error)."""

    def __init__(self, face_pass: FacePass, job: ShardJob, on_batch: Callable[[int], None]):
        self.face_pass, self.job, self.on_batch = face_pass, job, on_batch
        self.store = ShardStore(job.store_url)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: Future | None = None

    def __call__(self, spec: ShardSpec) -> None:
        table = self.face_pass.shard_table(spec, self.job.fingerprint, self.on_batch)
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


def executor_options(params: Params) -> dict[str, Any]:
    r = params.runtime
    return {"address": r.ray_address, "gpus_per_task": r.gpus_per_task, "cpus_per_task": r.cpus_per_task}
