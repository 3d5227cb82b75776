"""What export's writers share: the sample shape, the dataset `Layout`, and the two kinds of format.

- shard formats (`ShardFormat`: webdataset, parquet, imagefolder) write one file per output shard, in
  parallel, samples in output (shuffled) order, plus optional index files over all shards at the end;
- dataset formats (`DatasetFormat`: recordio, lmdb) write one set of files for the whole dataset in one
  process, fed every sample once in key order, which is class order (classes are contiguous by identity).

A sample is a dict: key, class, identity, variant, image (encoded aligned crop), optional full
(encoded full frame), meta (JSON-able metadata) and optionally meta_json (meta already serialised).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

#: A WebDataset key is the member name up to the first dot: no dots, no slashes, nothing relative.
SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_key(key: str) -> str:
    if not SAFE_KEY.fullmatch(key):
        raise ValueError(f"unsafe sample key {key!r}: keys are letters, digits, '_' and '-' only")
    return key


@dataclass(frozen=True)
class Layout:
    """What every writer knows of the whole dataset: labels are 0..classes-1, images are `image_ext` files."""

    classes: int
    samples: int
    image_ext: str
    name: str = "synthfaces"

    def class_name(self, cls: int) -> str:
        """A class's folder / label name: its id zero-padded to one width, so name order is id order."""
        return f"{cls:0{max(1, len(str(max(self.classes - 1, 0))))}d}"


class ShardFormat:
    """One file per output shard; `finish` may add index files over all shards. `files` and `reader` say,
    for the dataset card, what lies in the folder and what reads it."""

    scope: ClassVar[Literal["shard"]] = "shard"
    folder: ClassVar[str]
    suffix: ClassVar[str]
    files: ClassVar[str]
    reader: ClassVar[str]

    def write(self, path: Path, samples: list[dict[str, Any]], layout: Layout) -> dict[str, Any]:
        """Write the shard atomically; returns its sha256 and bytes, hashed as it was written."""
        raise NotImplementedError

    def finish(self, out_dir: Path, shards: list[dict[str, Any]], layout: Layout) -> list[dict[str, Any]]:
        """Index files over the written shards (manifest entries, paths relative to out_dir)."""
        return []


class DatasetFormat:
    """One set of files for the whole dataset, from every sample in key (= class) order."""

    scope: ClassVar[Literal["dataset"]] = "dataset"
    folder: ClassVar[str]
    files: ClassVar[str]
    reader: ClassVar[str]

    def write_all(
        self, out_dir: Path, batches: Iterable[list[dict[str, Any]]], layout: Layout, image_bytes: int
    ) -> list[dict[str, Any]]:
        """Write every file atomically; returns their manifest entries (paths relative to out_dir).
        `image_bytes` is the encoded size of all samples' images (for stores that size themselves first)."""
        raise NotImplementedError


def entry(path: str, samples: int | None, written: dict[str, Any]) -> dict[str, Any]:
    return {"path": path, "samples": samples, **written}
