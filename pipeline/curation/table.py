"""The keep/reason table each curation step writes: one row per candidate, in candidate order.

Candidate order is shard by shard, rows sorted by key within a shard; since a shard holds contiguous
identities and keys start with the zero-padded identity, it is also key order. Steps after the filter
pair each candidate shard with its slice of the previous table (`along_candidates`), so no step joins
tables of millions of rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.shards.candidates import iter_candidates
from pipeline.shards.io import atomic_path, remove_temporaries

BASE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("identity", pa.int64(), nullable=False),
        pa.field("variant", pa.int16(), nullable=False),
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


def _as_table(rows: pd.DataFrame | pa.Table, schema: pa.Schema) -> pa.Table:
    if isinstance(rows, pd.DataFrame):
        return pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False)
    return rows.select(schema.names).cast(schema)


class CurationWriter:
    """Appends keep/reason rows (a shard at a time) to one Parquet file, renamed into place on success."""

    def __init__(self, path: str | Path, extra: list[pa.Field] | None = None, notes: dict[str, Any] | None = None):
        self.path = Path(path)
        self.schema = pa.schema(list(BASE_SCHEMA) + (extra or []), metadata=_notes_metadata(notes))
        self.counts: dict[str, int] = {}
        self.rows = self.kept = 0

    def __enter__(self) -> CurationWriter:
        remove_temporaries(self.path.parent, self.path.name)  # a killed run's partial table
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._writer = pq.ParquetWriter(tmp, self.schema, compression="zstd")
        return self

    def write(self, rows: pd.DataFrame | pa.Table) -> None:
        table = _as_table(rows, self.schema)
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self.rows += table.num_rows
        self.kept += int(pc.sum(table.column("keep")).as_py() or 0)
        for reason, n in reason_counts(table).items():
            self.counts[reason] = self.counts.get(reason, 0) + n

    def __exit__(self, *exc: Any) -> None:
        self._writer.close()
        self._atomic.__exit__(*exc)

    def summary(self) -> str:
        return f"kept {self.kept:,} of {self.rows:,}; rejected {dict(sorted(self.counts.items()))}"


#: Prefix of the Parquet schema metadata keys that carry a step's notes (JSON) to the steps after it.
NOTE_PREFIX = "synthfaces."


def _notes_metadata(notes: dict[str, Any] | None) -> dict[bytes, bytes] | None:
    if not notes:
        return None
    return {f"{NOTE_PREFIX}{k}".encode(): json.dumps(v, sort_keys=True).encode() for k, v in notes.items()}


def curation_notes(table_or_path: pa.Table | str | Path) -> dict[str, Any]:
    """The notes a curation table carries (e.g. dedup's `search` report), from its schema metadata."""
    schema = table_or_path.schema if isinstance(table_or_path, pa.Table) else pq.read_schema(table_or_path)
    meta = schema.metadata or {}
    return {
        k.decode()[len(NOTE_PREFIX) :]: json.loads(v) for k, v in meta.items() if k.decode().startswith(NOTE_PREFIX)
    }


def write_curation(rows: pd.DataFrame | pa.Table, path: str | Path, extra: list[pa.Field] | None = None) -> None:
    """Write a whole curation table at once (sorted by key, which is candidate order)."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.sort_values("key", kind="stable").reset_index(drop=True)
    else:
        rows = rows.sort_by("key")
    with CurationWriter(path, extra) as writer:
        writer.write(rows)


def read_curation(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: run the stages before this one (dvc repro)") from None


def reason_counts(rows: pd.DataFrame | pa.Table) -> dict[str, int]:
    """Rejections per reason code (kept rows are not counted)."""
    if isinstance(rows, pd.DataFrame):
        rejected = rows.loc[~rows["keep"], "reason"]
        return {str(k): int(v) for k, v in sorted(rejected.value_counts().items())}
    rejected = rows.column("reason").filter(pc.invert(rows.column("keep")))
    counts = pc.value_counts(rejected).to_pylist()
    return {c["values"]: int(c["counts"]) for c in sorted(counts, key=lambda c: c["values"])}


def along_candidates(
    curation: pa.Table, candidates: str | Path, columns: list[str]
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Each candidate shard (the given columns, `key` included) with its rows of the curation table.

    Raises if the table does not list the same candidates in the same order (it is from another run)."""
    offset = 0
    for shard in iter_candidates(candidates, list(dict.fromkeys(["key", *columns]))):
        rows = curation.slice(offset, shard.num_rows)
        if rows.num_rows != shard.num_rows or not rows.column("key").equals(shard.column("key")):
            raise PipelineError(
                f"the curation table does not match data/candidates at row {offset:,} (it was made from other "
                "candidates): re-run the stages after generate (dvc repro)"
            )
        offset += shard.num_rows
        yield shard, rows
    if offset != curation.num_rows:
        raise PipelineError(
            f"the curation table has {curation.num_rows:,} rows, data/candidates {offset:,}: re-run dvc repro"
        )


def keep_mask(rows: pa.Table) -> np.ndarray:
    return rows.column("keep").to_numpy(zero_copy_only=False).astype(bool)
