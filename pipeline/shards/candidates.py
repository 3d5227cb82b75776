"""The candidate store: one Parquet file per shard of identities, plus a JSON done-marker written last.

A shard is complete only when its marker exists, names the expected fingerprint, and the
Parquet file beside it has the recorded size and sha256; anything else is recomputed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.faces.columns import QUALITY_COLUMNS
from pipeline.shards.io import atomic_path, sha256_file, sha256_stream, write_json_atomic

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


class ShardStore:
    """Where shard workers write candidate shards: a local folder or any fsspec URL (s3://, gs://,
    file://, memory://), so workers on other machines can write where the driver can read.

    A shard is written as Parquet then a JSON marker (the completion signal). Locally the file is
    fsynced and renamed into place; on a remote store each file is uploaded whole to a temporary name,
    then moved. Size and sha256 come from the writer's own bytes, so if concurrent writers leave a
    marker and a file from different runs, the resume check sees the mismatch and recomputes.
    """

    def __init__(self, location: str | Path):
        from fsspec.core import url_to_fs
        from fsspec.implementations.local import LocalFileSystem

        self.url = str(location)
        try:
            self.fs, root = url_to_fs(self.url)
        except (ImportError, ValueError) as err:
            raise PipelineError(f"runtime.output_url: cannot open {self.url!r}: {err}") from None
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _put(self, source: Path, name: str) -> None:
        """Upload a finished local file under `name`: whole, to a temporary name, then moved into place."""
        tmp = self.path(f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.fs.makedirs(self.root, exist_ok=True)
        self.fs.put_file(str(source), tmp)
        self.fs.mv(tmp, self.path(name))

    def write_shard(self, spec: ShardSpec, table: pa.Table, fingerprint: str, stats: dict[str, Any]) -> dict:
        """Write the shard's Parquet, then its marker; returns the marker."""
        folder = Path(self.root) if self.local else Path(tempfile.mkdtemp(prefix="synthfaces-shard-"))
        try:
            with atomic_path(folder / f"{spec.name}.parquet") as tmp:
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
            write_json_atomic(folder / f"{spec.name}.json", marker)
            if not self.local:
                self._put(folder / f"{spec.name}.parquet", f"{spec.name}.parquet")
                self._put(folder / f"{spec.name}.json", f"{spec.name}.json")
        finally:
            if not self.local:
                shutil.rmtree(folder, ignore_errors=True)
        return marker

    def read_marker(self, spec: ShardSpec) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self.path(f"{spec.name}.json")))
        except (OSError, ValueError):
            return None

    def shard_problem(self, spec: ShardSpec, fingerprint: str) -> str | None:
        """None when the shard is complete and valid, else why it must be (re)computed."""
        marker = self.read_marker(spec)
        if marker is None:
            return "not done"
        if marker.get("fingerprint") != fingerprint or marker.get("identities") != [spec.start, spec.stop]:
            return "params, weights or generation version changed"
        path = self.path(f"{spec.name}.parquet")
        if not self.fs.isfile(path):
            return "parquet file missing"
        size = self.fs.size(path)
        if size != marker.get("bytes"):
            return f"size {size} != recorded {marker.get('bytes')} (truncated or corrupt)"
        with self.fs.open(path, "rb") as fh:
            digest = sha256_stream(fh)
        if digest != marker.get("sha256"):
            return "sha256 mismatch (corrupt)"
        return None

    def remove_stale_temporaries(self) -> int:
        """Delete leftovers of killed writers (`.NAME.tmp-PID-...`); returns how many."""
        stale = self.fs.glob(self.path(".*.tmp-*")) if self.fs.isdir(self.root) else []
        for path in stale:
            self.fs.rm_file(path)
        return len(stale)

    def remove_unplanned(self, planned: set[str]) -> list[str]:
        """Drop shards outside the plan (identities.count was lowered) so no stale file lingers."""
        if not self.fs.isdir(self.root):
            return []
        removed = []
        for path in sorted(self.fs.glob(self.path("shard-*.parquet")) + self.fs.glob(self.path("shard-*.json"))):
            name = path.rsplit("/", 1)[-1]
            if name.rsplit(".", 1)[0] not in planned:
                self.fs.rm_file(path)
                removed.append(name)
        return removed

    def fetch(self, spec: ShardSpec, folder: Path) -> None:
        """Copy a finished shard into a local folder (Parquet first, marker last), unless already there."""
        local = ShardStore(folder)
        marker = self.read_marker(spec)
        if marker is None:
            raise PipelineError(f"{self.path(spec.name)}: no marker after generation (a worker failed?)")
        if local.shard_problem(spec, marker["fingerprint"]) is None:
            return
        with atomic_path(folder / f"{spec.name}.parquet") as tmp:
            self.fs.get_file(self.path(f"{spec.name}.parquet"), str(tmp))
            if sha256_file(tmp) != marker["sha256"]:
                raise PipelineError(f"{self.path(spec.name)}.parquet: sha256 differs from its marker while copying")
        write_json_atomic(folder / f"{spec.name}.json", marker)


def shard_files(folder: str | Path, hashes: bool = False) -> list[Path]:
    """The Parquet file of every shard the candidate manifest lists, in shard (identity) order, each checked
    against its marker: its size always (cheap), its sha256 too when `hashes` (a full read: the filter stage,
    the first to read the shards after generate, does it; see `corrupt_shard`)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder / MANIFEST} not found: run the generate stage first (dvc repro)") from None
    paths = [folder / f"{s['shard']}.parquet" for s in manifest["shards"]]
    for path, marker in zip(paths, manifest["shards"], strict=True):
        size = path.stat().st_size if path.is_file() else None
        if size != marker["bytes"]:
            raise corrupt_shard(path, f"{size} bytes, its marker says {marker['bytes']}")
    if hashes:
        with ThreadPoolExecutor(2) as pool:  # hashlib releases the GIL: two files at a time
            for path, marker, digest in zip(paths, manifest["shards"], pool.map(sha256_file, paths), strict=True):
                if digest != marker["sha256"]:
                    raise corrupt_shard(
                        path, f"sha256 {digest[:16]}... differs from its marker's {marker['sha256'][:16]}..."
                    )
    return paths


def corrupt_shard(path: Path, what: str) -> PipelineError:
    """The error for a candidate shard whose bytes are not the ones generate wrote, with the way out."""
    return PipelineError(
        f"{path}: {what}: the shard changed after generate wrote it. If DVC links files from its cache "
        f"(cache.type hardlink), its cached copy is this same file: remove both (find .dvc/cache -samefile {path} "
        f"-delete; rm {path}), then dvc repro: generate recomputes the shard and DVC caches the new one"
    )


def iter_candidates(folder: str | Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """One candidate shard at a time (rows sorted by key, identities contiguous): what curation streams."""
    for path in shard_files(folder):
        yield pq.read_table(path, columns=columns)


def read_candidates(folder: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All shards at once, for small sets (tests, reports of a few columns); stages stream `iter_candidates`."""
    tables = list(iter_candidates(folder, columns))
    return pa.concat_tables(tables) if tables else candidate_schema([]).empty_table()


def candidate_images(folder: str | Path, keys: set[str], column: str = "image") -> dict[str, bytes]:
    """`column` (the full image by default) of the candidates in `keys`, reading only the shards that hold one
    and only those rows."""
    images: dict[str, bytes] = {}
    for path in shard_files(folder):
        shard_keys = pq.read_table(path, columns=["key"]).column("key").to_pylist()
        rows = [i for i, k in enumerate(shard_keys) if k in keys]
        if rows:
            table = pq.read_table(path, columns=["key", column]).take(pa.array(rows))
            images.update(zip(table.column("key").to_pylist(), table.column(column).to_pylist(), strict=True))
    return images


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column as one [rows, dim] numpy array, without a Python object per row."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    dim = column.type.list_size
    parts = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim) for c in chunks if len(c)]
    if not parts:
        return np.zeros((0, dim), column.type.value_type.to_pandas_dtype())
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def candidate_columns(folder: str | Path) -> list[str]:
    """Column names of the candidate shards (from the first shard's footer)."""
    manifest = json.loads((Path(folder) / MANIFEST).read_text())
    if not manifest["shards"]:
        return candidate_schema([]).names
    return pq.read_schema(Path(folder) / f"{manifest['shards'][0]['shard']}.parquet").names
