"""`reports/metrics.json` (for `dvc metrics show`) and `reports/plots/*.csv` (for `dvc plots show`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.curation import reason_counts
from pipeline.shards.io import write_bytes_atomic


def stage_metrics(df: pd.DataFrame) -> dict[str, Any]:
    return {"kept": int(df["keep"].sum()), "rejected": int((~df["keep"]).sum()), "reasons": reason_counts(df)}


def build_metrics(
    candidates: dict[str, Any],
    filtered: pd.DataFrame,
    deduped: pd.DataFrame,
    selection: pd.DataFrame,
    dataset: dict[str, Any],
) -> dict[str, Any]:
    """Counts per stage and per rejection reason; each curation table is cumulative."""
    return {
        "generate": {
            "candidates": int(candidates["rows"]),
            "identities": int(candidates["identities"]),
            "shards": len(candidates["shards"]),
            "faces_found": sum(int(s["stats"]["faces_found"]) for s in candidates["shards"]),
        },
        "filter": stage_metrics(filtered),
        "dedup": {**stage_metrics(deduped), "identities_kept": int(deduped.loc[deduped["keep"], "identity"].nunique())},
        "balance": stage_metrics(selection),
        "dataset": dataset["counts"],
    }


def write_reason_plot(metrics: dict[str, Any], path: Path) -> None:
    """One row per (stage, reason): rejections as they accumulate through curation."""
    rows = [
        {"stage": stage, "reason": reason, "count": n}
        for stage in ("filter", "dedup", "balance")
        for reason, n in metrics[stage]["reasons"].items()
    ]
    frame = pd.DataFrame(rows, columns=["stage", "reason", "count"])
    write_bytes_atomic(path, frame.to_csv(index=False).encode())


def write_quality_histograms(candidates: pd.DataFrame, kept: pd.Series, folder: Path, bins: int = 30) -> list[str]:
    """reports/plots/quality/<q_column>.csv: per bin, how many candidates and how many of them the filter
    kept; thresholds can be tuned from these without regenerating. Returns the columns written."""
    from pipeline.faces.quality import QUALITY_COLUMNS

    written = []
    for column in QUALITY_COLUMNS:
        values = candidates[column].to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            continue
        lo, hi = float(values[finite].min()), float(values[finite].max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        all_counts, _ = np.histogram(values[finite], edges)
        kept_counts, _ = np.histogram(values[finite & kept.to_numpy()], edges)
        frame = pd.DataFrame({"value": (edges[:-1] + edges[1:]) / 2, "candidates": all_counts, "kept": kept_counts})
        write_bytes_atomic(folder / f"{column}.csv", frame.to_csv(index=False, float_format="%.6g").encode())
        written.append(column)
    return written
