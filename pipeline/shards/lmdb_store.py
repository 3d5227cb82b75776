"""`lmdb/train.lmdb`: one LMDB file in the layout the Vec2Face / VFace trainer reads: every sample under its
key as msgpack `[encoded image, class]`, plus `__len__` (samples), `__keys__` (the keys in class order)
and `__classnum__` (classes), each msgpack. Written in one process, keys appended in sorted order, in fixed
transactions and a map size computed from the data, so identical input gives identical bytes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.shards.io import atomic_path, sha256_file
from pipeline.shards.layout import DatasetFormat, Layout, entry

PAGE = 4096
#: Records per write transaction: bounds LMDB's dirty-page list (and this process's memory).
TXN_RECORDS = 2048


def map_size(samples: int, image_bytes: int) -> int:
    """Room for every record on its own overflow pages (values over ~2 KB take whole pages), the branch and
    leaf pages of the keys, and the key list, with margin; the file grows only as far as it is used."""
    need = 2 * image_bytes + samples * (2 * PAGE + 64) + (64 << 20)
    return -(-need // (1 << 20)) * (1 << 20)


class LMDBWriter(DatasetFormat):
    folder = "lmdb"
    files = "`train.lmdb` (msgpack `[image, class]` per key; `__keys__`, `__len__`, `__classnum__`)"
    reader = "SOTA-Face-Recognition-Train-and-Test's `LMDB` (the Vec2Face papers' recognition trainer)"

    def write_all(
        self, out_dir: Path, batches: Iterable[list[dict[str, Any]]], layout: Layout, image_bytes: int
    ) -> list[dict[str, Any]]:
        import lmdb
        import msgpack

        path = out_dir / self.folder / "train.lmdb"
        keys: list[bytes] = []
        with atomic_path(path) as tmp:
            env = lmdb.open(str(tmp), subdir=False, lock=False, map_size=map_size(layout.samples, image_bytes),
                            meminit=True, sync=False, metasync=False)  # fmt: skip
            try:
                pending: list[tuple[bytes, bytes]] = []
                for batch in batches:
                    for s in batch:
                        key = s["key"].encode("ascii")
                        if keys and key <= keys[-1]:
                            raise PipelineError(f"lmdb: key {s['key']} out of order")
                        keys.append(key)
                        pending.append((key, msgpack.packb([s["image"], int(s["class"])], use_bin_type=True)))
                        if len(pending) >= TXN_RECORDS:  # transactions follow the record count, not batches
                            _put(env, pending)
                if len(keys) != layout.samples:
                    raise PipelineError(f"lmdb: got {len(keys)} samples, expected {layout.samples}")
                _put(env, pending)
                _put(env, [(b"__classnum__", msgpack.packb(layout.classes)),
                           (b"__keys__", msgpack.packb(keys, use_bin_type=True)),
                           (b"__len__", msgpack.packb(len(keys)))], append=False)  # fmt: skip
                env.sync(True)
            finally:
                env.close()
        return [entry(f"{self.folder}/train.lmdb", layout.samples,
                      {"sha256": sha256_file(path), "bytes": path.stat().st_size})]  # fmt: skip


def _put(env: Any, records: list[tuple[bytes, bytes]], append: bool = True) -> None:
    """Write the records (sorted, when appended) in one transaction and empty the list."""
    import lmdb

    try:
        with env.begin(write=True) as txn:
            for key, value in records:
                if not txn.put(key, value, append=append, overwrite=False):
                    raise PipelineError(f"lmdb: key {key!r} written twice")
    except lmdb.MapFullError as err:
        raise PipelineError(f"lmdb: the map size estimate was too small ({err}): report this as a bug") from err
    records.clear()
