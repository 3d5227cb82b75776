"""Dataset writers, one registry entry per `export.formats` name (the two kinds are in `layout.py`):
webdataset and parquet here, imagefolder, recordio and lmdb in their own modules, imported by their factory.

Every writer writes to a temporary name and renames, with fixed member metadata so identical input gives
identical bytes, and reports the sha256 and size of each file it wrote, hashed on the way out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.registry import Registry
from pipeline.shards.io import hashed_atomic, write_bytes_atomic, write_json_atomic
from pipeline.shards.layout import DatasetFormat, Layout, ShardFormat, check_key, entry

#: Parquet row groups of about this many bytes stream well (what `datasets` targets for images).
ROW_GROUP_BYTES = 100 << 20
#: An int: a float mtime makes Python's tarfile add a PAX header (two 512-byte blocks) to every member.
FIXED_MTIME = 0
#: Up to this many classes the Parquet `class` column is a Hugging Face ClassLabel. Its feature lists every
#: class name and sits in every shard's footer (about 1 MB at this count); above it, a plain int64 Value.
CLASS_LABEL_MAX = 100_000
#: The WebDataset shard index that `wids.ShardListDataset` opens (URLs relative to its folder), and the class
#: and image counts beside it that Vec2Face's trainer reads (`ids:C ims:N`).
WIDS_INDEX = "train.wids.json"
WIDS_INFO = "dataset_info.txt"


class WebDatasetWriter(ShardFormat):
    """KEY.<ext> (aligned), KEY.full.<ext> (optional), KEY.cls, KEY.json; members sorted, mtime fixed.
    `finish` writes the `wids` shard index (url, nsamples, filesize per shard) beside the tars."""

    folder = "webdataset"
    suffix = ".tar"
    files = "`train-NNNNNN.tar` (KEY.jpg aligned crop, KEY.cls, KEY.json), `train.wids.json`, `dataset_info.txt`"
    reader = '`webdataset.WebDataset`, `wids.ShardListDataset("webdataset/train.wids.json")`'

    def write(self, path: Path, samples: list[dict[str, Any]], layout: Layout) -> dict[str, Any]:
        import webdataset as wds

        ext = layout.image_ext
        with (
            hashed_atomic(path) as fh,
            wds.TarWriter(fh, encoder=False, mtime=FIXED_MTIME, user="synthfaces", group="synthfaces") as tar,
        ):
            for s in samples:
                record = {
                    "__key__": check_key(s["key"]),
                    ext: s["image"],
                    "cls": str(s["class"]).encode(),
                    "json": s.get("meta_json") or json.dumps(s["meta"], sort_keys=True).encode(),
                }
                if s.get("full") is not None:
                    record[f"full.{ext}"] = s["full"]
                tar.write(record)
        return {"sha256": fh.sha256, "bytes": fh.size}

    def finish(self, out_dir: Path, shards: list[dict[str, Any]], layout: Layout) -> list[dict[str, Any]]:
        index = {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "name": layout.name,
            "shardlist": [
                {"url": Path(s["path"]).name, "nsamples": s["samples"], "filesize": s["bytes"]} for s in shards
            ],
        }
        written = write_json_atomic(out_dir / self.folder / WIDS_INDEX, index)
        counts = f"ids:{layout.classes} ims:{layout.samples}\n".encode()
        info = write_bytes_atomic(out_dir / self.folder / WIDS_INFO, counts)
        return [entry(f"{self.folder}/{WIDS_INDEX}", layout.samples, written),
                entry(f"{self.folder}/{WIDS_INFO}", None, info)]  # fmt: skip


class HuggingFaceParquetWriter(ShardFormat):
    """Image columns as {bytes, path} structs declared as `datasets` Image features in the schema metadata;
    `class` a ClassLabel up to CLASS_LABEL_MAX classes."""

    folder = "parquet"
    suffix = ".parquet"
    files = "`train-NNNNNN.parquet` (`datasets` Image columns, `class` a ClassLabel, metadata columns)"
    reader = '`datasets.load_dataset("parquet", data_files="parquet/*.parquet")`'

    def write(self, path: Path, samples: list[dict[str, Any]], layout: Layout) -> dict[str, Any]:
        ext = layout.image_ext
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        columns: dict[str, Any] = {
            "key": pa.array([s["key"] for s in samples], pa.string()),
            "class": pa.array([s["class"] for s in samples], pa.int64()),
            "identity": pa.array([s["identity"] for s in samples], pa.int64()),
            "variant": pa.array([s["variant"] for s in samples], pa.int16()),
            "image": pa.array([{"bytes": s["image"], "path": f"{s['key']}.{ext}"} for s in samples], image_type),
        }
        features: dict[str, Any] = {
            "key": {"dtype": "string", "_type": "Value"},
            "class": class_feature(layout),
            "identity": {"dtype": "int64", "_type": "Value"},
            "variant": {"dtype": "int16", "_type": "Value"},
            "image": {"_type": "Image"},
        }
        if samples and samples[0].get("full") is not None:
            columns["full"] = pa.array(
                [{"bytes": s["full"], "path": f"{s['key']}.full.{ext}"} for s in samples], image_type
            )
            features["full"] = {"_type": "Image"}
        for name in sorted(set(samples[0]["meta"]) - set(columns)) if samples else []:
            values = [s["meta"][name] for s in samples]
            columns[name] = pa.array(values)
            features[name] = _value_feature(columns[name].type)
        table = pa.table(columns)
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        per_row = max(1, table.nbytes // max(1, table.num_rows))
        with hashed_atomic(path) as fh:
            pq.write_table(table, fh, row_group_size=max(1, ROW_GROUP_BYTES // per_row), compression="zstd")
        return {"sha256": fh.sha256, "bytes": fh.size}


def class_feature(layout: Layout) -> dict[str, Any]:
    """A ClassLabel named like the imagefolder's class folders, or an int64 Value past CLASS_LABEL_MAX."""
    if layout.classes > CLASS_LABEL_MAX:
        return {"dtype": "int64", "_type": "Value"}
    return {"names": [layout.class_name(c) for c in range(layout.classes)], "_type": "ClassLabel"}


def _value_feature(arrow_type: pa.DataType) -> dict[str, Any]:
    if pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        return {"feature": _value_feature(arrow_type.value_type), "_type": "Sequence"}
    names = {
        pa.float32(): "float32",
        pa.float64(): "float64",
        pa.int64(): "int64",
        pa.string(): "string",
        pa.bool_(): "bool",
    }
    return {"dtype": names.get(arrow_type, str(arrow_type)), "_type": "Value"}


WRITERS: Registry[ShardFormat | DatasetFormat] = Registry("export format")
WRITERS.register("webdataset")(WebDatasetWriter)
WRITERS.register("parquet")(HuggingFaceParquetWriter)


@WRITERS.register("imagefolder")
def _imagefolder() -> ShardFormat:
    from pipeline.shards.imagefolder import ImageFolderWriter

    return ImageFolderWriter()


@WRITERS.register("recordio")
def _recordio() -> DatasetFormat:
    from pipeline.shards.recordio import RecordIOWriter

    return RecordIOWriter()


@WRITERS.register("lmdb")
def _lmdb() -> DatasetFormat:
    from pipeline.shards.lmdb_store import LMDBWriter

    return LMDBWriter()
