"""Curation tables: one row per candidate with keep/reason, carried forward from stage to stage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.shards.io import atomic_path

BASE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("identity", pa.int64(), nullable=False),
        pa.field("variant", pa.int16(), nullable=False),
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


def write_curation(df: pd.DataFrame, path: str | Path, extra: list[pa.Field] | None = None) -> None:
    """Write a curation table with an explicit schema, sorted by key (deterministic bytes)."""
    schema = pa.schema(list(BASE_SCHEMA) + (extra or []))
    df = df.sort_values("key", kind="stable").reset_index(drop=True)
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_curation(path: str | Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: run the stages before this one (dvc repro)") from None


def reason_counts(df: pd.DataFrame) -> dict[str, int]:
    rejected = df.loc[~df["keep"], "reason"]
    return {str(k): int(v) for k, v in sorted(rejected.value_counts().items())}
