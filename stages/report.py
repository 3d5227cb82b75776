"""DVC stage report: metrics.json (counts per stage and reason, identity separation), plot data, pictures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.cli import preview
from pipeline.config import Params
from pipeline.curation.capacity import capacity_metrics
from pipeline.curation.table import keep_mask, read_curation
from pipeline.faces.attributes import attribute_catalog, balance_targets
from pipeline.faces.columns import ARTIFACT_COLUMNS, QUALITY_COLUMNS
from pipeline.report.audit import plot_rows
from pipeline.report.contact_sheet import contact_sheet, rejected_rows, sheet_bytes
from pipeline.report.margins import write_margin_sheets
from pipeline.report.metrics import (
    balance_report,
    build_metrics,
    dataset_embeddings,
    judge_report,
    similarity_report,
    write_quality_histograms,
    write_reason_plot,
)
from pipeline.report.variation import dataset_variation
from pipeline.shards.candidates import MANIFEST, candidate_columns, candidate_images, read_candidates
from pipeline.shards.io import remove_temporaries, write_bytes_atomic, write_json_atomic
from pipeline.stage import run_stage, stage_parser


def main(args: argparse.Namespace, params: Params) -> None:
    for folder in {Path(args.metrics).parent, Path(args.plots), Path(args.pictures)}:
        remove_temporaries(folder)  # a killed run's partial files
    filtered = read_curation(args.filter, ["key", "identity", "keep", "reason"])
    deduped = read_curation(args.dedup, ["key", "identity", "keep", "reason"])
    selection = read_curation(args.selection, ["key", "keep", "reason"])
    dataset_manifest = json.loads((Path(args.dataset) / "manifest.json").read_text())
    metrics = build_metrics(
        json.loads((Path(args.candidates) / MANIFEST).read_text()), filtered, deduped, selection, dataset_manifest
    )
    embeddings, identities = dataset_embeddings(Path(args.dataset) / "metadata.parquet")
    metrics["identity"] = similarity_report(embeddings, identities, Path(args.plots))
    metrics["identity_capacity"] = capacity_metrics(pd.read_csv(args.capacity))
    metrics["attributes"] = attribute_balance(params, args, keep_mask(deduped))
    metrics["judge"] = judge_report(dataset_manifest.get("judge"), Path(args.plots) / "judge.csv")
    metrics["audit"] = dataset_manifest.get("audit")
    metrics["variation"] = dataset_variation(params, Path(args.candidates), Path(args.dataset) / "metadata.parquet")
    rows = plot_rows(metrics["audit"] or {})
    write_bytes_atomic(Path(args.plots) / "label_audit.csv", pd.DataFrame(rows).to_csv(index=False).encode())
    write_json_atomic(args.metrics, metrics)
    write_reason_plot(metrics, Path(args.plots) / "rejections.csv")
    artifacts = [c for c in ARTIFACT_COLUMNS.values() if c in candidate_columns(args.candidates)]
    scores = read_candidates(args.candidates, ["key", "det_prob", *QUALITY_COLUMNS, *artifacts]).to_pandas()
    write_quality_histograms(scores, pd.Series(keep_mask(filtered)), Path(args.plots) / "quality")
    write_pictures(selection, Path(args.candidates), Path(args.dataset), Path(args.pictures))
    write_margin_sheets(scores, params.filter, Path(args.candidates), Path(args.pictures) / "margins")


def attribute_balance(params: Params, args: argparse.Namespace, curated: np.ndarray) -> dict[str, Any]:
    """Target vs. achieved per attribute bin: all candidates, after filter + dedup, in the exported dataset."""
    catalog = attribute_catalog(params.attributes)
    names = [f"attr_{a}" for a in catalog if f"attr_{a}" in candidate_columns(args.candidates)]
    candidates = read_candidates(args.candidates, ["identity", "variant", *names]).to_pandas()
    stages = {
        "candidates": candidates,
        "curated": candidates[curated],
        "dataset": pq.read_table(
            Path(args.dataset) / "metadata.parquet", columns=["identity", "variant", *names]
        ).to_pandas(),
    }
    return balance_report(
        stages, catalog, balance_targets(params.attributes, params.balance), Path(args.plots) / "balance.csv"
    )


def write_pictures(selection: pa.Table, candidates: Path, dataset: Path, folder: Path, per_reason: int = 8) -> None:
    """rejected.jpg (examples per rejection reason) and contact_sheet.jpg (first classes x their samples).
    Only the shards holding an example are read, and only those rows' images."""
    rejected = selection.filter(pc.invert(selection.column("keep"))).select(["key", "reason"]).to_pandas()
    images = candidate_images(candidates, set(rejected.sort_values("key").groupby("reason")["key"].head(per_reason)))
    sheet = contact_sheet(rejected_rows(rejected.assign(keep=False), images, per_reason), columns=per_reason)
    write_bytes_atomic(folder / "rejected.jpg", sheet_bytes(sheet))
    preview(dataset, rows=8, out=folder / "contact_sheet.jpg")


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--candidates", default="data/candidates")
    p.add_argument("--filter", default="data/curation/filter.parquet")
    p.add_argument("--dedup", default="data/curation/dedup.parquet")
    p.add_argument("--selection", default="data/curation/selection.parquet")
    p.add_argument("--dataset", default="data/dataset")
    p.add_argument("--capacity", default="reports/plots/capacity.csv", help="dedup's identity capacity curve")
    p.add_argument("--metrics", default="reports/metrics.json")
    p.add_argument("--plots", default="reports/plots")
    p.add_argument("--pictures", default="reports", help="folder for contact_sheet.jpg, rejected.jpg and margins/")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
