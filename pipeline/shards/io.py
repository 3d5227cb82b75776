"""Atomic file writes and hashing: a final name only ever holds a complete file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and rename it into place, else delete it.

    Concurrent writers of one path (a retried task) each write their own temporary file; the rename
    is atomic, so the final name always holds one writer's complete file, never a mix.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")  # unique per writer
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def remove_temporaries(folder: str | Path, name: str = "*") -> int:
    """Delete what killed writers left in `folder` (`atomic_path`'s `.NAME.tmp-PID-...` files, of `name` or of
    any file); returns how many. Run once by the one process that owns the folder, before it writes."""
    removed = 0
    for path in Path(folder).glob(f".{name}.tmp-*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def write_bytes_atomic(path: str | Path, data: bytes) -> dict[str, Any]:
    """Returns the file's manifest fields: sha256 and bytes."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def write_json_atomic(path: str | Path, obj: Any) -> dict[str, Any]:
    """Stable JSON (sorted keys, fixed indent) so identical content gives identical bytes."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def sha256_stream(fh: BinaryIO, chunk: int = 1 << 20) -> str:
    """sha256 of an open binary file read to its end (local, or an fsspec file on a remote store)."""
    digest = hashlib.sha256()
    while block := fh.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def listing_bytes(files: list[tuple[str, str]]) -> bytes:
    """A sha256sum listing (`<sha256>  <relative path>` per line, sorted by path) of (path, sha256) pairs."""
    return "".join(f"{digest}  {relative}\n" for relative, digest in sorted(files)).encode()


def read_listing(path: Path) -> list[tuple[str, str]]:
    """(sha256, path relative to the listing's folder) per line of a sha256sum listing; refuses paths that
    leave the folder."""
    rows = []
    for line in path.read_text().splitlines():
        digest, _, relative = line.partition("  ")
        if len(digest) != 64 or not relative or relative.startswith("/") or ".." in relative.split("/"):
            raise ValueError(f"{path}: not a sha256sum listing line: {line!r}")
        rows.append((digest, relative))
    return rows


class HashingFile:
    """A write-only binary file that hashes and counts what passes through, so a writer's output needs
    no second read for its manifest entry (tar and Parquet writers only write and tell)."""

    def __init__(self, fh: BinaryIO):
        self._fh = fh
        self._digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self._digest.update(view)
        self.size += view.nbytes
        return self._fh.write(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._fh.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


@contextlib.contextmanager
def hashed_atomic(path: str | Path) -> Iterator[HashingFile]:
    """Write `path` atomically through a HashingFile; its sha256 and size are final when the block ends."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        yield HashingFile(fh)
