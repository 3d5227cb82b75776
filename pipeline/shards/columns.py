"""Candidate columns in memory: a dict of column name -> numpy array or list, one entry per row."""

from __future__ import annotations

from typing import Any

import numpy as np

Columns = dict[str, Any]


def concat(chunks: list[Any]) -> Any:
    """One column from its parts (arrays stay arrays, lists stay lists)."""
    if isinstance(chunks[0], np.ndarray):
        return np.concatenate(chunks)
    return [x for chunk in chunks for x in chunk]


def concat_columns(parts: list[Columns]) -> Columns:
    return {k: concat([p[k] for p in parts]) for k in parts[0]}


def select_rows(columns: Columns, rows: np.ndarray) -> Columns:
    """The given rows of every column (arrays and lists)."""
    return {k: v[rows] if isinstance(v, np.ndarray) else [v[i] for i in rows] for k, v in columns.items()}


def candidate_order(columns: Columns) -> Columns:
    """Rows in candidate order: identity-major, then variant."""
    return select_rows(columns, np.lexsort((np.asarray(columns["variant"]), np.asarray(columns["identity"]))))
