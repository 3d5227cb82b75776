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


def similarity_report(
    embeddings: np.ndarray, identities: np.ndarray, folder: Path, max_impostor_pairs: int = 200_000, bins: int = 100
) -> dict[str, float]:
    """Genuine (same identity) vs. impostor (different identities) cosine histograms of the dataset
    (`similarity.csv` for dvc plots) and the equal-error crossing: the threshold where the share of
    impostor pairs above it equals the share of genuine pairs below it."""
    from pipeline.identities.consistency import normalise

    emb = normalise(embeddings)
    order = np.argsort(identities, kind="stable")
    emb, identities = emb[order], identities[order]
    genuine = []
    for group in np.split(np.arange(len(identities)), np.flatnonzero(np.diff(identities)) + 1):
        if len(group) > 1:
            sims = emb[group] @ emb[group].T
            genuine.append(sims[np.triu_indices(len(group), 1)])
    genuine_sims = np.concatenate(genuine) if genuine else np.zeros(0)
    rng = np.random.default_rng(0)
    a = rng.integers(0, len(emb), max_impostor_pairs)
    b = rng.integers(0, len(emb), max_impostor_pairs)
    different = identities[a] != identities[b]
    impostor_sims = np.einsum("ij,ij->i", emb[a[different]], emb[b[different]])
    edges = np.linspace(-1, 1, bins + 1)
    g_hist = np.histogram(genuine_sims, edges)[0] / max(len(genuine_sims), 1)
    i_hist = np.histogram(impostor_sims, edges)[0] / max(len(impostor_sims), 1)
    frame = pd.DataFrame({"cosine": (edges[:-1] + edges[1:]) / 2, "genuine": g_hist, "impostor": i_hist})
    write_bytes_atomic(folder / "similarity.csv", frame.to_csv(index=False, float_format="%.6g").encode())
    if not len(genuine_sims) or not len(impostor_sims):
        return {}
    thresholds = np.linspace(-1, 1, 2001)
    far = (impostor_sims[None, :] > thresholds[:, None]).mean(1)
    frr = (genuine_sims[None, :] <= thresholds[:, None]).mean(1)
    k = int(np.argmin(np.abs(far - frr)))
    return {
        "genuine_mean": float(genuine_sims.mean()),
        "impostor_mean": float(impostor_sims.mean()),
        "eer": float((far[k] + frr[k]) / 2),
        "eer_threshold": float(thresholds[k]),
    }


def balance_report(
    stages: dict[str, pd.DataFrame],
    catalog: dict[str, Any],
    targets: dict[str, dict[str, float]],
    path: Path,
) -> dict[str, Any]:
    """Per attribute bin: target and achieved share at each stage (dvc plots CSV + metrics)."""
    from pipeline.balance import class_shares

    lines = ["bin,target," + ",".join(stages)]
    report: dict[str, Any] = {}
    for attribute, info in catalog.items():
        if any(f"attr_{attribute}" not in rows.columns for rows in stages.values()):
            continue
        shares = {name: class_shares(rows, attribute, info.level) for name, rows in stages.items()}
        for cls in info.classes:
            target = targets.get(attribute, {}).get(cls)
            values = {name: float(s.get(cls, 0.0)) for name, s in shares.items()}
            key = f"{attribute}={cls}"
            report[key] = {"level": info.level, "target": target, **{k: round(v, 4) for k, v in values.items()}}
            cells = ",".join(f"{v:.4f}" for v in values.values())
            lines.append(f"{key},{'' if target is None else f'{target:.4f}'},{cells}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    final = list(stages)[-1]
    errors = [abs(v[final] - v["target"]) for v in report.values() if v["target"] is not None]
    return {"bins": report, "max_target_error": round(max(errors), 4) if errors else None}
