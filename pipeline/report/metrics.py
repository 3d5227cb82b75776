"""`reports/metrics.json` (for `dvc metrics show`) and `reports/plots/*.csv` (for `dvc plots show`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.curation.table import curation_notes, reason_counts
from pipeline.report.verification import HISTOGRAM_EDGES, verification_rates
from pipeline.shards.io import write_bytes_atomic


def stage_metrics(table: pa.Table) -> dict[str, Any]:
    kept = int(pc.sum(table.column("keep")).as_py() or 0)
    return {"kept": kept, "rejected": table.num_rows - kept, "reasons": reason_counts(table)}


def build_metrics(
    candidates: dict[str, Any],
    filtered: pa.Table,
    deduped: pa.Table,
    selection: pa.Table,
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
        "dedup": {
            **stage_metrics(deduped),
            "identities_kept": len(pc.unique(deduped.column("identity").filter(deduped.column("keep")))),
            "search": curation_notes(deduped).get("search"),
        },
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
    """reports/plots/quality/<q_column>.csv (the artifact scores too, when the candidates carry them): per bin, how
    many candidates and how many of them the filter kept; thresholds can be tuned from these without
    regenerating. Returns the columns written."""
    from pipeline.faces.columns import ARTIFACT_COLUMNS, QUALITY_COLUMNS

    written = []
    for column in [*QUALITY_COLUMNS, *(c for c in ARTIFACT_COLUMNS.values() if c in candidates)]:
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


#: Samples the identity-similarity report reads at most (whole identities, a seeded choice of them).
SIMILARITY_MAX_SAMPLES = 200_000


def dataset_embeddings(metadata: Path, max_samples: int = SIMILARITY_MAX_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Float16 embeddings and identities of a seeded choice of whole identities from metadata.parquet, read
    batch by batch: memory is bounded by `max_samples` however large the dataset."""
    import pyarrow.parquet as pq

    from pipeline.shards.candidates import embedding_matrix

    identities = pq.read_table(metadata, columns=["identity"]).column("identity").to_numpy()
    unique = np.unique(identities)
    if not len(unique):
        return np.zeros((0, 512), np.float16), identities
    per_identity = len(identities) / len(unique)
    count = min(len(unique), max(2, int(max_samples / per_identity)))
    chosen = np.sort(np.random.default_rng(0).choice(unique, count, replace=False))
    parts, ids = [], []
    for batch in pq.ParquetFile(metadata).iter_batches(columns=["identity", "embedding"], batch_size=65_536):
        batch_ids = batch.column(0).to_numpy()
        mask = np.isin(batch_ids, chosen)
        parts.append(embedding_matrix(batch.column(1).filter(pa.array(mask))))
        ids.append(batch_ids[mask])
    return np.concatenate(parts), np.concatenate(ids)


def similarity_report(
    embeddings: np.ndarray, identities: np.ndarray, folder: Path, max_impostor_pairs: int = 200_000, bins: int = 100
) -> dict[str, float]:
    """Genuine (same identity) vs. impostor (different identities) cosine histograms of the dataset
    (`similarity.csv` for dvc plots) and the equal-error crossing: the threshold where the share of
    impostor pairs above it equals the share of genuine pairs below it. Vectors are normalised a group
    or a chunk at a time, so float16 input is never copied whole."""
    from pipeline.curation.consistency import normalise

    order = np.argsort(identities, kind="stable")
    sorted_ids = identities[order]
    genuine = []
    for group in np.split(order, np.flatnonzero(np.diff(sorted_ids)) + 1):
        if len(group) > 1:
            e = normalise(embeddings[np.sort(group)])
            genuine.append((e @ e.T)[np.triu_indices(len(group), 1)])
    genuine_sims = np.concatenate(genuine) if genuine else np.zeros(0)
    rng = np.random.default_rng(0)
    a = rng.integers(0, len(embeddings), max_impostor_pairs) if len(embeddings) else np.zeros(0, np.int64)
    b = rng.integers(0, len(embeddings), max_impostor_pairs) if len(embeddings) else np.zeros(0, np.int64)
    different = identities[a] != identities[b]
    a, b = a[different], b[different]
    impostor_sims = np.concatenate(
        [np.einsum("ij,ij->i", normalise(embeddings[a[lo : lo + 16_384]]), normalise(embeddings[b[lo : lo + 16_384]]))
         for lo in range(0, len(a), 16_384)] or [np.zeros(0)]
    )  # fmt: skip
    edges = HISTOGRAM_EDGES if bins == len(HISTOGRAM_EDGES) - 1 else np.linspace(-1, 1, bins + 1)
    g_hist = np.histogram(genuine_sims, edges)[0] / max(len(genuine_sims), 1)
    i_hist = np.histogram(impostor_sims, edges)[0] / max(len(impostor_sims), 1)
    frame = pd.DataFrame({"cosine": (edges[:-1] + edges[1:]) / 2, "genuine": g_hist, "impostor": i_hist})
    write_bytes_atomic(folder / "similarity.csv", frame.to_csv(index=False, float_format="%.6g").encode())
    if not len(genuine_sims) or not len(impostor_sims):
        return {}
    rates = verification_rates(genuine_sims, impostor_sims)
    return {
        "genuine_mean": float(genuine_sims.mean()),
        "impostor_mean": float(impostor_sims.mean()),
        "eer": rates["eer"],
        "eer_threshold": rates["eer_threshold"],
    }


def judge_report(verdict: dict[str, Any] | None, path: Path) -> dict[str, Any]:
    """The judge's numbers for metrics.json and its genuine / impostor histograms as dvc plot data (`path`; an
    empty table when no judge ran)."""
    histogram = (verdict or {}).get("histogram") or {"cosine": [], "genuine": [], "impostor": []}
    frame = pd.DataFrame(histogram)[["cosine", "genuine", "impostor"]]
    write_bytes_atomic(path, frame.to_csv(index=False, float_format="%.6g").encode())
    return {k: v for k, v in (verdict or {}).items() if k not in ("histogram", "label")}


def balance_report(
    stages: dict[str, pd.DataFrame],
    catalog: dict[str, Any],
    targets: dict[str, dict[str, float]],
    path: Path,
) -> dict[str, Any]:
    """Per attribute bin: target and achieved share at each stage (dvc plots CSV + metrics)."""
    from pipeline.curation.balance import class_shares

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
