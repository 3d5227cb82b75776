"""`reports/metrics.json` (for `dvc metrics show`) and `reports/plots/*.csv` (for `dvc plots show`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
