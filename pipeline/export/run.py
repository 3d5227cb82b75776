"""The export stage's driver: selected candidates -> dataset shards, metadata, card, manifest, in two passes
over a process pool (encode per candidate shard into spills, then write per output shard)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import pipeline
from pipeline.config import ExportParams, Params
from pipeline.curation.consistency import normalise
from pipeline.curation.table import curation_notes, keep_mask, read_curation, reason_counts
from pipeline.errors import PipelineError
from pipeline.export.pool import WorkerPool, export_workers
from pipeline.export.workers import (
    DatasetTask,
    EncodeTask,
    WriteTask,
    encode_shard,
    read_spill,
    write_dataset,
    write_shard,
)
from pipeline.faces.attributes import attribute_catalog
from pipeline.faces.columns import QUALITY_COLUMNS
from pipeline.report.audit import LabelAudit
from pipeline.report.card import render_card
from pipeline.report.judge import run_judge
from pipeline.runtime.device import resolve_devices
from pipeline.shards.candidates import IMAGE_COLUMNS, MANIFEST, embedding_matrix, shard_files
from pipeline.shards.io import hashed_atomic, write_json_atomic
from pipeline.shards.layout import Layout, entry
from pipeline.shards.notice import description
from pipeline.shards.writers import CLASS_LABEL_MAX, WRITERS
from pipeline.weights import WeightsStore

log = logging.getLogger(__name__)

SHARD_PREFIX = "train"
#: Temporary folder of the encoded samples between the two passes (removed at the end and at the next start).
SPILL = ".export-spill"
#: Samples (the first by key) for the card's genuine / impostor means.
SIMILARITY_SAMPLES = 4000
JSON_FIELDS = ("identity", "variant", "seed", "psi", "det_prob", "n_faces", "box", "landmarks", "model_sha256")


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return f"synthfaces {pipeline.__version__}"
    return f"synthfaces {pipeline.__version__} ({commit})"


def export_positions(count: int, params: Params) -> np.ndarray:
    """Output position of each selected sample (given in key order): a seeded shuffle, so every shard
    mixes many classes (streams well), or key order. Only these integers are ever held for all samples."""
    if not params.export.shuffle:
        return np.arange(count, dtype=np.int64)
    order = np.random.default_rng([params.seed, 0x5EED]).permutation(count)
    positions = np.empty(count, np.int64)
    positions[order] = np.arange(count)
    return positions


def partition(sizes: list[int] | np.ndarray, max_count: int, max_bytes: int) -> list[slice]:
    """Consecutive slices with at most max_count samples and (unless one sample is larger) max_bytes."""
    slices, start, acc = [], 0, 0
    for i, size in enumerate(np.asarray(sizes, np.int64).tolist()):
        if i > start and (i - start >= max_count or acc + size > max_bytes):
            slices.append(slice(start, i))
            start, acc = i, 0
        acc += size
    if start < len(sizes):
        slices.append(slice(start, len(sizes)))
    return slices


def run_export(
    params: Params,
    candidates_dir: Path,
    selection_path: Path,
    out_dir: Path,
    weights: WeightsStore | None = None,
) -> dict[str, Any]:
    """Write the dataset into out_dir; returns its manifest. Memory: a candidate shard or an output shard
    per worker, plus an integer or two per selected sample. The judge (`judge.model`; its files in the
    weights store or its package) scores the dataset for the card."""
    cand_manifest = json.loads((candidates_dir / MANIFEST).read_text())
    selection = read_curation(selection_path, ["key", "keep", "reason", "class"])
    if selection.num_rows != int(cand_manifest["rows"]):
        raise PipelineError(f"{selection_path} has {selection.num_rows:,} rows, the candidates "
                            f"{cand_manifest['rows']:,}: re-run dvc repro")  # fmt: skip
    _clear_previous(out_dir)
    spill_dir = out_dir / SPILL
    spill_dir.mkdir(parents=True)
    try:
        manifest = _export(params, cand_manifest, candidates_dir, selection, out_dir, spill_dir, weights)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    return manifest


def _export(
    params: Params,
    cand_manifest: dict,
    candidates_dir: Path,
    selection: pa.Table,
    out_dir: Path,
    spill_dir: Path,
    weights: WeightsStore | None = None,
) -> dict[str, Any]:
    ex = params.export
    selected = np.flatnonzero(keep_mask(selection))
    positions = export_positions(len(selected), params)
    classes = selection.column("class").to_numpy()
    tasks = _encode_tasks(ex, cand_manifest, shard_files(candidates_dir), selection, selected, positions, spill_dir)
    layout = Layout(classes=int(classes[selected].max()) + 1 if len(selected) else 0, samples=len(selected),
                    image_ext=ex.image_format, name=params.dataset.name)  # fmt: skip
    writers = {fmt: WRITERS.create(fmt) for fmt in ex.formats}
    workers = export_workers(ex.workers)
    with WorkerPool(workers) as pool:
        start = time.perf_counter()
        sizes = np.zeros(len(selected), np.int64)
        for pos, size in pool.map(encode_shard, tasks, "export: encode"):
            sizes[pos] = size
        log.info("export: %d samples from %d candidate shards encoded in %.1f s on %d processes", len(selected),
                 len(tasks), time.perf_counter() - start, workers)  # fmt: skip
        audit = LabelAudit(params.dedup.min_sample_consistency, _identity_attributes(params, tasks))
        files, stats, shards = _write_formats(pool, tasks, sizes, positions, layout, writers, ex, out_dir, audit)
    counts = {
        "identities": layout.classes,
        "images_per_identity": params.dataset.images_per_identity,
        "samples": len(selected),
        "candidates": int(cand_manifest["rows"]),
    }
    card_info = _card_info(params, cand_manifest, selection, counts, stats, writers, shards)
    card_info |= _verdicts(params, candidates_dir, out_dir, selection, audit, weights)
    return _publish(params, cand_manifest, out_dir, files, card_info)


def _verdicts(
    params: Params, candidates_dir: Path, out_dir: Path, selection: pa.Table, audit: LabelAudit,
    weights: WeightsStore | None,
) -> dict[str, Any]:  # fmt: skip
    """What the dataset is judged by: the independent judge, dedup's look-alike search, the label audit."""
    verdict = None
    if params.judge.model is not None and audit.classes:
        verdict = run_judge(params.judge.model, params.judge.identities, candidates_dir, out_dir / "metadata.parquet",
                            weights)  # fmt: skip
    device = resolve_devices(params.runtime)[0]
    return {
        "judge": verdict,
        "search": curation_notes(selection).get("search"),
        "audit": audit.finish(params.dedup.max_identity_similarity, device, verdict),
    }


def _publish(
    params: Params, cand_manifest: dict, out_dir: Path, files: list[dict[str, Any]], card_info: dict[str, Any]
) -> dict[str, Any]:
    """The dataset card, then manifest.json (written last: it lists every file with its sha256)."""
    with hashed_atomic(out_dir / "README.md") as fh:
        fh.write(render_card(card_info).encode())
    files.append(entry("README.md", None, {"sha256": fh.sha256, "bytes": fh.size}))
    manifest = {
        "name": params.dataset.name,
        "counts": {**card_info["counts"], "shards": card_info["shards"]},
        "classes": card_info["counts"]["identities"],
        "formats": list(params.export.formats),
        "files": files,
        "generator": cand_manifest["generator"],
        "embedder_weights": cand_manifest["embedder_weights"],
        "candidates_fingerprint": cand_manifest["fingerprint"],
        "params": params.model_dump(mode="json"),
        "code_version": card_info["code_version"],
        "judge": card_info["judge"],
        "dedup_search": card_info["search"],
        "audit": card_info["audit"],
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def _card_info(
    params: Params, cand_manifest: dict, selection: pa.Table, counts: dict[str, int], stats: dict[str, Any],
    writers: dict[str, Any], shards: int,
) -> dict[str, Any]:  # fmt: skip
    """What the dataset card says, but the judge's verdict."""
    return {
        "name": params.dataset.name,
        "generator": cand_manifest["generator"],
        "embedder_weights": cand_manifest["embedder_weights"],
        "counts": counts,
        "reasons": reason_counts(selection),
        "attributes": stats["attributes"],
        "quality": stats["quality"],
        "similarity": stats["similarity"],
        "formats": list(params.export.formats),
        "format_notes": [{"folder": w.folder, "files": w.files, "reader": w.reader} for w in writers.values()],
        "shards": shards,
        "params": params.model_dump(mode="json"),
        "code_version": code_version(),
        "smoke": params.generator.model == "smoke",
    }


def _identity_attributes(params: Params, tasks: list[EncodeTask]) -> list[str]:
    """Identity-level attributes whose labels the exported samples carry (for the label audit)."""
    columns = set(tasks[0].meta_columns) if tasks else set()
    catalog = attribute_catalog(params.attributes)
    return sorted(a for a, info in catalog.items() if info.level == "identity" and f"attr_{a}" in columns)


def _encode_tasks(
    ex: ExportParams, cand_manifest: dict, shard_paths: list[Path], selection: pa.Table, selected: np.ndarray,
    positions: np.ndarray, spill_dir: Path,
) -> list[EncodeTask]:  # fmt: skip
    """Pass 1's work: per candidate shard holding selected rows, which rows, their keys, classes and positions."""
    classes, keys = selection.column("class").to_numpy(), selection.column("key")
    schema_names = pq.read_schema(shard_paths[0]).names if shard_paths else []
    meta_columns = tuple(c for c in schema_names if c not in IMAGE_COLUMNS)
    attr_columns = sorted(c for c in meta_columns if c.startswith("attr_"))
    text = description(cand_manifest["generator"]["label"] or cand_manifest["generator"]["model"])
    tasks, offset = [], 0
    for s, path in zip(cand_manifest["shards"], shard_paths, strict=True):
        lo, hi = np.searchsorted(selected, [offset, offset + int(s["rows"])])
        if hi > lo:
            rows = selected[lo:hi]
            tasks.append(EncodeTask(
                shard=str(path), rows=rows - offset, keys=keys.take(pa.array(rows)).combine_chunks(),
                classes=classes[rows], positions=positions[lo:hi], spill=str(spill_dir / f"{s['shard']}.arrow"),
                meta_spill=str(spill_dir / f"{s['shard']}.meta.arrow"), meta_columns=meta_columns,
                json_columns=(*JSON_FIELDS, *QUALITY_COLUMNS, *attr_columns), image_format=ex.image_format,
                image_quality=ex.image_quality, include_full=ex.include_full, text=text,
            ))  # fmt: skip
        offset += int(s["rows"])
    return tasks


def _write_formats(
    pool: WorkerPool, tasks: list[EncodeTask], sizes: np.ndarray, positions: np.ndarray, layout: Layout,
    writers: dict[str, Any], ex: ExportParams, out_dir: Path, audit: LabelAudit,
) -> tuple[list[dict[str, Any]], dict[str, Any], int]:  # fmt: skip
    """Pass 2: every format from the spills (whole-dataset formats beside the shard writes) and metadata.parquet;
    returns the manifest entries, the card's statistics and the number of output shards."""
    start = time.perf_counter()
    slices = partition(sizes + 1024, ex.samples_per_shard, ex.max_shard_bytes)
    names = [f"{SHARD_PREFIX}-{k:06d}" for k in range(len(slices))]
    spills = tuple(t.spill for t in tasks)
    shard_formats = tuple(f for f, w in writers.items() if w.scope == "shard")
    # Whole-dataset formats first: each is one long task, and runs beside the shard writes.
    whole = {f: pool.submit(write_dataset, DatasetTask(f, spills, str(out_dir), layout, int(sizes.sum())))
             for f, w in writers.items() if w.scope == "dataset"}  # fmt: skip
    write_tasks = [WriteTask(name, sl.start, sl.stop, spills, str(out_dir), shard_formats, layout)
                   for name, sl in zip(names, slices, strict=True)] if shard_formats else []  # fmt: skip
    starts = np.array([sl.start for sl in slices], np.int64)
    with ThreadPoolExecutor(1) as thread:  # metadata.parquet in this process while the workers write shards
        meta = thread.submit(_write_metadata, out_dir / "metadata.parquet", [t.meta_spill for t in tasks],
                             positions, starts, names, audit)  # fmt: skip
        files = [e for entries in pool.map(write_shard, write_tasks, "export: write") for e in entries]
        for fmt in shard_formats:
            folder = writers[fmt].folder
            files += writers[fmt].finish(out_dir, [e for e in files if e["path"].startswith(f"{folder}/")], layout)
        for fmt, future in whole.items():
            files += future.result()
            log.info("export: %s written", fmt)
        stats = meta.result()
    files.append(entry("metadata.parquet", len(sizes), stats.pop("file")))
    log.info("export: %d shards x %d shard formats, %d whole-dataset formats and metadata.parquet written "
             "in %.1f s", len(slices), len(shard_formats), len(whole), time.perf_counter() - start)  # fmt: skip
    if "parquet" in ex.formats and layout.classes > CLASS_LABEL_MAX:
        log.info("export: %d classes > %d: the Parquet `class` column is a plain int64, not a ClassLabel",
                 layout.classes, CLASS_LABEL_MAX)  # fmt: skip
    return files, stats, len(slices)


def _write_metadata(
    path: Path, meta_spills: list[str], positions: np.ndarray, starts: np.ndarray, names: list[str], audit: LabelAudit
) -> dict[str, Any]:
    """metadata.parquet in key order (the spills in shard order), with each sample's output shard; the card's
    statistics gathered on the way (attribute counts, quality percentiles, similarity of the first samples) and
    the label audit's per-class state (a spill holds whole classes)."""
    attributes: dict[str, Counter] = {}
    quality: dict[str, list[np.ndarray]] = {c: [] for c in QUALITY_COLUMNS}
    embeddings, identities = [], []
    done = 0
    writer = None
    with hashed_atomic(path) as fh:
        for spill in meta_spills:
            table = read_spill(spill)
            shard = np.searchsorted(starts, positions[done : done + table.num_rows], side="right") - 1
            table = table.append_column("shard", pa.array(np.asarray(names, dtype=object)[shard], pa.string()))
            done += table.num_rows
            if writer is None:
                writer = pq.ParquetWriter(fh, table.schema, compression="zstd")
            writer.write_table(table)
            audit.add(table)
            for c in (n for n in table.column_names if n.startswith("attr_")):
                if pa.types.is_string(table.schema.field(c).type):
                    attributes.setdefault(c, Counter()).update(table.column(c).to_pylist())
            for c in QUALITY_COLUMNS:
                quality[c].append(table.column(c).to_numpy(zero_copy_only=False))
            if sum(len(e) for e in embeddings) < SIMILARITY_SAMPLES:
                embeddings.append(embedding_matrix(table.column("embedding")))
                identities.append(table.column("identity").to_numpy())
        if writer is not None:
            writer.close()
    summary_q = {c: tuple(np.percentile(np.concatenate(v), [5, 50, 95]).tolist()) for c, v in quality.items() if v}
    similarity = {}
    if embeddings:
        n = SIMILARITY_SAMPLES
        similarity = similarity_summary(np.concatenate(embeddings)[:n], np.concatenate(identities)[:n])
    return {
        "file": {"sha256": fh.sha256, "bytes": fh.size},
        "attributes": {c: dict(n) for c, n in attributes.items()},
        "quality": summary_q,
        "similarity": similarity,
    }


def _clear_previous(out_dir: Path) -> None:
    """Remove an earlier export's format folders (and a killed run's spill) so no file from another plan
    survives: each registered format owns its folder."""
    shutil.rmtree(out_dir / SPILL, ignore_errors=True)
    for writer_name in WRITERS.names():
        shutil.rmtree(out_dir / WRITERS.create(writer_name).folder, ignore_errors=True)


def similarity_summary(embeddings: np.ndarray, identities: np.ndarray) -> dict[str, float]:
    """Mean genuine and impostor cosine over the given embeddings (the first selected samples by key)."""
    if len(identities) < 2:
        return {}
    emb = normalise(np.asarray(embeddings, np.float32))
    sim = emb @ emb.T
    same = identities[:, None] == identities[None, :]
    off = ~np.eye(len(identities), dtype=bool)
    genuine, impostor = sim[same & off], sim[~same]
    return {
        "genuine_mean": float(genuine.mean()) if genuine.size else float("nan"),
        "impostor_mean": float(impostor.mean()) if impostor.size else float("nan"),
    }
