"""Candidate records: the CPU half of a batch (image encoding) and a shard's columns as an Arrow table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.faces.columns import ARTIFACT_COLUMNS
from pipeline.shards.candidates import candidate_schema
from pipeline.shards.columns import Columns
from pipeline.shards.encode import JpegEncoder, encode

#: Keys of the host arrays that the device pass leaves for `encode`.
HOST_PIXELS, HOST_CROPS = "_pixels", "_crops"
#: Columns beyond DESIGN §7's fixed ones: attribute estimates, steering, separation and edit records; and the
#: artifact scores asked for.
EXTRA_PREFIXES = ("attr_", "steer_", "sep_", "edit_")
EXTRA_COLUMNS = frozenset(ARTIFACT_COLUMNS.values())


def encode_images(columns: Columns, jpeg: JpegEncoder) -> Columns:
    """The CPU half of a batch (runs on an encoder thread): JPEG of the full image unless the device made it,
    lossless PNG of the aligned crop."""
    pixels = columns.pop(HOST_PIXELS, None)
    if pixels is not None:
        columns["image"] = jpeg(pixels)
    columns["aligned"] = [encode(a, "png") for a in columns.pop(HOST_CROPS)]
    return columns


def _extra_field(name: str, values: Any) -> pa.Field:
    arr = np.asarray(values)
    if arr.dtype.kind in "OUS":
        return pa.field(name, pa.string())
    if arr.dtype.kind == "b":
        return pa.field(name, pa.bool_())
    return pa.field(name, pa.int32() if arr.dtype.kind in "iu" else pa.float32())


def shard_table(columns: Columns, model_sha256: str, fingerprint: str) -> pa.Table:
    """A shard's encoded columns (in candidate order) as an Arrow table with the candidate schema."""
    rows = len(columns["key"])
    columns = columns | {"model_sha256": [model_sha256] * rows, "params_fingerprint": [fingerprint] * rows}
    extra_fields = [
        _extra_field(k, v) for k, v in columns.items() if k.startswith(EXTRA_PREFIXES) or k in EXTRA_COLUMNS
    ]
    schema = candidate_schema(extra_fields)
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)
