"""The candidate store: one Parquet file per shard of identities, plus a JSON done-marker written last.

A shard is complete only when its marker exists, names the expected fingerprint, and the
Parquet file beside it has the recorded size and sha256; anything else is recomputed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.faces.quality import QUALITY_COLUMNS
from pipeline.shards.io import atomic_path, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "aligned")
EMBEDDING_DIM = 512
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardSpec:
    """Identities [start, stop) of shard `index`."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}"


def plan_shards(count: int, shard_size: int) -> list[ShardSpec]:
    return [ShardSpec(s, s * shard_size, min((s + 1) * shard_size, count)) for s in range(-(-count // shard_size))]


def sample_key(identity: int, variant: int) -> str:
    return f"{identity:09d}_{variant:03d}"


def candidate_schema(attribute_fields: list[pa.Field]) -> pa.Schema:
    """DESIGN §7 columns in a fixed order; attribute columns depend on the estimators in use."""
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("identity", pa.int64(), nullable=False),
        pa.field("variant", pa.int16(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("psi", pa.float32()),
        pa.field("det_prob", pa.float32()),
        pa.field("n_faces", pa.int16()),
        pa.field("box", pa.list_(pa.float32(), 4)),
        pa.field("landmarks", pa.list_(pa.float32(), 10)),
        pa.field("embedding", pa.list_(pa.float16(), EMBEDDING_DIM)),
        *(pa.field(name, pa.float32()) for name in QUALITY_COLUMNS),
        *sorted(attribute_fields, key=lambda f: f.name),
        pa.field("image", pa.binary()),
        pa.field("aligned", pa.binary()),
        pa.field("model_sha256", pa.string()),
        pa.field("params_fingerprint", pa.string()),
    ]
    return pa.schema(fields)


def marker_path(folder: Path, spec: ShardSpec) -> Path:
    return folder / f"{spec.name}.json"


def parquet_path(folder: Path, spec: ShardSpec) -> Path:
    return folder / f"{spec.name}.parquet"


def write_shard(folder: Path, spec: ShardSpec, table: pa.Table, fingerprint: str, stats: dict[str, Any]) -> dict:
    """Write the shard's Parquet atomically, then its marker (the completion signal).

    Size and sha256 are taken from this writer's own temporary file, so a marker always describes
    the bytes its writer produced: if concurrent writers leave a marker and a file from different
    runs, the resume check sees the mismatch and recomputes.
    """
    with atomic_path(parquet_path(folder, spec)) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=1024, write_statistics=False)
        size, digest = tmp.stat().st_size, sha256_file(tmp)
    marker = {
        "shard": spec.name,
        "identities": [spec.start, spec.stop],
        "rows": table.num_rows,
        "bytes": size,
        "sha256": digest,
        "fingerprint": fingerprint,
        "stats": stats,
    }
    write_json_atomic(marker_path(folder, spec), marker)
    return marker


def read_marker(folder: Path, spec: ShardSpec) -> dict | None:
    try:
        return json.loads(marker_path(folder, spec).read_text())
    except (OSError, ValueError):
        return None


def shard_problem(folder: Path, spec: ShardSpec, fingerprint: str) -> str | None:
    """None when the shard is complete and valid, else why it must be (re)computed."""
    marker = read_marker(folder, spec)
    if marker is None:
        return "not done"
    if marker.get("fingerprint") != fingerprint or marker.get("identities") != [spec.start, spec.stop]:
        return "params or code changed"
    path = parquet_path(folder, spec)
    if not path.is_file():
        return "parquet file missing"
    if path.stat().st_size != marker.get("bytes"):
        return f"size {path.stat().st_size} != recorded {marker.get('bytes')} (truncated or corrupt)"
    if sha256_file(path) != marker.get("sha256"):
        return "sha256 mismatch (corrupt)"
    return None


def read_candidates(folder: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All shards listed in the candidate manifest, in shard order; `columns` limits what is read."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder / MANIFEST} not found: run the generate stage first (dvc repro)") from None
    tables = [pq.read_table(folder / f"{s['shard']}.parquet", columns=columns) for s in manifest["shards"]]
    return pa.concat_tables(tables) if tables else candidate_schema([]).empty_table()


def candidate_columns(folder: str | Path) -> list[str]:
    """Column names of the candidate shards (from the first shard's footer)."""
    manifest = json.loads((Path(folder) / MANIFEST).read_text())
    if not manifest["shards"]:
        return candidate_schema([]).names
    return pq.read_schema(Path(folder) / f"{manifest['shards'][0]['shard']}.parquet").names
