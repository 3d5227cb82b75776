"""Export's tasks, run on a process pool (this module imports no torch and no pandas, so a spawned
worker starts in well under a second):

- `encode_shard`: one candidate shard's selected samples, re-encoded with the synthetic-media notice,
  into a spill file sorted by output position, plus their metadata rows in key order;
- `write_shard`: one output shard, gathered from the spills by position range and written in every
  shard format, each file hashed as it is written;
- `write_dataset`: one dataset format (recordio, lmdb), fed every sample from the spills in key order.

Every byte depends on the samples and their positions only, never on which worker ran what.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.shards.layout import Layout, entry
from pipeline.shards.notice import encode_image_with_notice
from pipeline.shards.writers import WRITERS

SPILL_SCHEMA = pa.schema(
    [
        pa.field("position", pa.int64()),
        pa.field("key", pa.string()),
        pa.field("class", pa.int64()),
        pa.field("identity", pa.int64()),
        pa.field("variant", pa.int16()),
        pa.field("image", pa.binary()),
        pa.field("full", pa.binary()),
        pa.field("meta", pa.binary()),
    ]
)


@dataclass(frozen=True)
class EncodeTask:
    """Rows `rows` of candidate shard `shard` (their keys, as Arrow: no Python string per sample, classes and
    output positions) -> `spill`, `meta_spill`."""

    shard: str
    rows: np.ndarray
    keys: pa.Array
    classes: np.ndarray
    positions: np.ndarray
    spill: str
    meta_spill: str
    meta_columns: tuple[str, ...]
    json_columns: tuple[str, ...]
    image_format: str
    image_quality: int
    include_full: bool
    text: str


def _json_value(value: Any) -> Any:
    """Rounded for the per-sample JSON; NaN or infinity (an unscored q_disc) becomes null, since JSON has none."""
    if isinstance(value, list):
        return [round(float(v), 4) if math.isfinite(v) else None for v in value]
    if isinstance(value, float):
        return round(value, 5) if math.isfinite(value) else None
    return value


def _reencode(data: bytes, task: EncodeTask) -> bytes:
    image = Image.open(io.BytesIO(data))
    image = image.convert("RGB") if image.mode != "RGB" else image
    return encode_image_with_notice(image, task.image_format, task.image_quality, task.text)


def _write_ipc(path: str, table: pa.Table) -> None:
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
        out.write_table(table)


def encode_shard(task: EncodeTask) -> tuple[np.ndarray, np.ndarray]:
    """Returns the spill's positions (sorted) and the encoded bytes of each of those samples."""
    images = ["aligned", "image"] if task.include_full else ["aligned"]
    table = pq.read_table(task.shard, columns=[*task.meta_columns, *images], use_threads=False)
    table = table.take(pa.array(task.rows))
    if not table.column("key").combine_chunks().equals(task.keys):
        raise PipelineError(f"{task.shard}: the selection lists other candidates than it holds: re-run dvc repro")
    meta = table.select(list(task.meta_columns))
    meta = meta.add_column(1, pa.field("class", pa.int64()), pa.array(task.classes, pa.int64()))
    _write_ipc(task.meta_spill, meta)
    records = table.select(list(dict.fromkeys(["key", "identity", "variant", *task.json_columns]))).to_pylist()
    aligned = table.column("aligned").to_pylist()
    full = table.column("image").to_pylist() if task.include_full else [None] * len(aligned)
    encoded, full_encoded, metas = [], [], []
    for rec, cls, crop, frame in zip(records, task.classes.tolist(), aligned, full, strict=True):
        m = {k: _json_value(rec[k]) for k in task.json_columns}
        m["key"], m["class"] = rec["key"], int(cls)
        metas.append(json.dumps(m, sort_keys=True).encode())
        encoded.append(_reencode(crop, task))
        full_encoded.append(None if frame is None else _reencode(frame, task))
    order = np.argsort(task.positions, kind="stable")
    spill = pa.table(
        {
            "position": pa.array(task.positions, pa.int64()),
            "key": pa.array([r["key"] for r in records], pa.string()),
            "class": pa.array(task.classes, pa.int64()),
            "identity": pa.array([r["identity"] for r in records], pa.int64()),
            "variant": pa.array([r["variant"] for r in records], pa.int16()),
            "image": pa.array(encoded, pa.binary()),
            "full": pa.array(full_encoded, pa.binary()),
            "meta": pa.array(metas, pa.binary()),
        },
        schema=SPILL_SCHEMA,
    ).take(pa.array(order))
    _write_ipc(task.spill, spill)
    sizes = np.array([len(e) + len(f or b"") for e, f in zip(encoded, full_encoded, strict=True)], np.int64)
    return task.positions[order], sizes[order]


@dataclass(frozen=True)
class WriteTask:
    """Output shard `name`: the samples at positions [start, stop), in every shard format."""

    name: str
    start: int
    stop: int
    spills: tuple[str, ...]
    out_dir: str
    formats: tuple[str, ...]
    layout: Layout


@dataclass(frozen=True)
class DatasetTask:
    """Dataset format `format`: every sample of the spills, in key (= class) order."""

    format: str
    spills: tuple[str, ...]
    out_dir: str
    layout: Layout
    image_bytes: int


def read_spill(path: str) -> pa.Table:
    """A spill file, memory-mapped: slicing it copies nothing."""
    return pa.ipc.open_file(pa.memory_map(path)).read_all()


def samples_of(rows: pa.Table, with_meta: bool = True) -> list[dict[str, Any]]:
    """The writers' sample dicts for spill rows, in row order (metadata parsed only when asked)."""
    columns = [rows.column(c).to_pylist() for c in ("key", "class", "identity", "variant", "image", "full")]
    metas = rows.column("meta").to_pylist() if with_meta else [None] * rows.num_rows
    return [
        {
            "key": k,
            "class": c,
            "identity": i,
            "variant": v,
            "image": img,
            "full": f,
            "meta": json.loads(m) if m is not None else None,
            "meta_json": m,
        }
        for k, c, i, v, img, f, m in zip(*columns, metas, strict=True)
    ]


def write_shard(task: WriteTask) -> list[dict[str, Any]]:
    """Gather the shard's samples from every spill, in position order, and write each shard format."""
    parts = []
    for spill in task.spills:
        table = read_spill(spill)
        pos = table.column("position").to_numpy()
        lo, hi = np.searchsorted(pos, [task.start, task.stop])
        if hi > lo:
            parts.append(table.slice(lo, hi - lo))
    samples = samples_of(pa.concat_tables(parts).sort_by("position"))
    entries = []
    for fmt in task.formats:
        writer = WRITERS.create(fmt)
        relative = f"{writer.folder}/{task.name}{writer.suffix}"
        written = writer.write(Path(task.out_dir) / relative, samples, task.layout)
        entries.append(entry(relative, len(samples), written))
    return entries


def write_dataset(task: DatasetTask) -> list[dict[str, Any]]:
    """Feed one dataset format every sample once, spill by spill (candidate shard order) and by key within."""
    batches = (samples_of(read_spill(spill).sort_by("key"), with_meta=False) for spill in task.spills)
    return WRITERS.create(task.format).write_all(Path(task.out_dir), batches, task.layout, task.image_bytes)
