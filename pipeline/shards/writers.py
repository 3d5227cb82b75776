"""Dataset shard writers (WebDataset tar, Hugging Face Parquet), registered by `export.formats` name.

A sample is a dict: key, class, identity, variant, image (encoded aligned crop), optional full
(encoded full frame), meta (JSON-able metadata) and optionally meta_json (meta already serialised).
Every writer writes to a temporary name and renames, with fixed member metadata so identical input gives
identical bytes, and returns the sha256 and size of what it wrote, hashed on the way out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.registry import Registry
from pipeline.shards.io import hashed_atomic

#: Parquet row groups of about this many bytes stream well (what `datasets` targets for images).
ROW_GROUP_BYTES = 100 << 20
#: An int: a float mtime makes Python's tarfile add a PAX header (two 512-byte blocks) to every member.
FIXED_MTIME = 0
#: A WebDataset key is the member name up to the first dot: no dots, no slashes, nothing relative.
SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_key(key: str) -> str:
    if not SAFE_KEY.fullmatch(key):
        raise ValueError(f"unsafe sample key {key!r}: keys are letters, digits, '_' and '-' only")
    return key


class ShardWriter(Protocol):
    folder: str
    suffix: str

    def write(self, path: Path, samples: list[dict[str, Any]], image_ext: str) -> dict[str, Any]:
        """Write the shard atomically; returns its sha256 and bytes, hashed as it was written."""
        ...


class WebDatasetWriter:
    """KEY.<ext> (aligned), KEY.full.<ext> (optional), KEY.cls, KEY.json; members sorted, mtime fixed."""

    folder = "webdataset"
    suffix = ".tar"

    def write(self, path: Path, samples: list[dict[str, Any]], image_ext: str) -> dict[str, Any]:
        import webdataset as wds

        with (
            hashed_atomic(path) as fh,
            wds.TarWriter(fh, encoder=False, mtime=FIXED_MTIME, user="synthfaces", group="synthfaces") as tar,
        ):
            for s in samples:
                record = {
                    "__key__": check_key(s["key"]),
                    image_ext: s["image"],
                    "cls": str(s["class"]).encode(),
                    "json": s.get("meta_json") or json.dumps(s["meta"], sort_keys=True).encode(),
                }
                if s.get("full") is not None:
                    record[f"full.{image_ext}"] = s["full"]
                tar.write(record)
        return {"sha256": fh.sha256, "bytes": fh.size}


class HuggingFaceParquetWriter:
    """Image columns as {bytes, path} structs declared as `datasets` Image features in the schema metadata."""

    folder = "parquet"
    suffix = ".parquet"

    def write(self, path: Path, samples: list[dict[str, Any]], image_ext: str) -> dict[str, Any]:
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        columns: dict[str, Any] = {
            "key": pa.array([s["key"] for s in samples], pa.string()),
            "class": pa.array([s["class"] for s in samples], pa.int64()),
            "identity": pa.array([s["identity"] for s in samples], pa.int64()),
            "variant": pa.array([s["variant"] for s in samples], pa.int16()),
            "image": pa.array([{"bytes": s["image"], "path": f"{s['key']}.{image_ext}"} for s in samples], image_type),
        }
        features: dict[str, Any] = {
            "key": {"dtype": "string", "_type": "Value"},
            "class": {"dtype": "int64", "_type": "Value"},
            "identity": {"dtype": "int64", "_type": "Value"},
            "variant": {"dtype": "int16", "_type": "Value"},
            "image": {"_type": "Image"},
        }
        if samples and samples[0].get("full") is not None:
            columns["full"] = pa.array(
                [{"bytes": s["full"], "path": f"{s['key']}.full.{image_ext}"} for s in samples], image_type
            )
            features["full"] = {"_type": "Image"}
        for name in sorted(samples[0]["meta"]) if samples else []:
            values = [s["meta"][name] for s in samples]
            columns[name] = pa.array(values)
            features[name] = _value_feature(columns[name].type)
        table = pa.table(columns)
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        per_row = max(1, table.nbytes // max(1, table.num_rows))
        with hashed_atomic(path) as fh:
            pq.write_table(table, fh, row_group_size=max(1, ROW_GROUP_BYTES // per_row), compression="zstd")
        return {"sha256": fh.sha256, "bytes": fh.size}


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


WRITERS: Registry[ShardWriter] = Registry("export format")
WRITERS.register("webdataset")(WebDatasetWriter)
WRITERS.register("parquet")(HuggingFaceParquetWriter)
