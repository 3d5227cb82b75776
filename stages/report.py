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

from pipeline.cli import run_stage, stage_parser
from pipeline.commands import preview
from pipeline.config import Params
from pipeline.curation import read_curation
from pipeline.faces.attributes import attribute_catalog, balance_targets
from pipeline.faces.quality import QUALITY_COLUMNS
from pipeline.report.contact_sheet import contact_sheet, rejected_rows, sheet_bytes
from pipeline.report.metrics import (
    balance_report,
    build_metrics,
    similarity_report,
    write_quality_histograms,
    write_reason_plot,
)
from pipeline.shards.candidates import MANIFEST, candidate_columns, read_candidates
from pipeline.shards.io import write_bytes_atomic, write_json_atomic


def main(args: argparse.Namespace, params: Params) -> None:
    filtered = read_curation(args.filter)
    selection = read_curation(args.selection)
    metrics = build_metrics(
        json.loads((Path(args.candidates) / MANIFEST).read_text()),
        filtered,
        read_curation(args.dedup),
        selection,
        json.loads((Path(args.dataset) / "manifest.json").read_text()),
    )
    dataset = pq.read_table(Path(args.dataset) / "metadata.parquet", columns=["identity", "embedding"])
    metrics["identity"] = similarity_report(
        np.stack(dataset.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32),
        dataset.column("identity").to_numpy(),
        Path(args.plots),
    )
    metrics["attributes"] = attribute_balance(params, args)
    write_json_atomic(args.metrics, metrics)
    write_reason_plot(metrics, Path(args.plots) / "rejections.csv")
    scores = read_candidates(args.candidates, ["key", *QUALITY_COLUMNS]).to_pandas()
    kept = scores["key"].map(filtered.set_index("key")["keep"]).fillna(False).astype(bool)
    write_quality_histograms(scores, kept, Path(args.plots) / "quality")
    write_pictures(selection, Path(args.candidates), Path(args.dataset), Path(args.pictures))


def attribute_balance(params: Params, args: argparse.Namespace) -> dict[str, Any]:
    """Target vs. achieved per attribute bin: all candidates, after filter + dedup, in the exported dataset."""
    catalog = attribute_catalog(params)
    names = [f"attr_{a}" for a in catalog if f"attr_{a}" in candidate_columns(args.candidates)]
    candidates = read_candidates(args.candidates, ["key", "identity", "variant", *names]).to_pandas()
    curated = read_curation(args.dedup)
    stages = {
        "candidates": candidates,
        "curated": candidates[candidates["key"].isin(curated.loc[curated["keep"], "key"])],
        "dataset": pq.read_table(
            Path(args.dataset) / "metadata.parquet", columns=["identity", "variant", *names]
        ).to_pandas(),
    }
    return balance_report(stages, catalog, balance_targets(params), Path(args.plots) / "balance.csv")


def write_pictures(selection: pd.DataFrame, candidates: Path, dataset: Path, folder: Path, per_reason: int = 8) -> None:
    """rejected.jpg (examples per rejection reason) and contact_sheet.jpg (first classes x their samples)."""
    wanted = sorted(selection.loc[~selection["keep"]].sort_values("key").groupby("reason")["key"].head(per_reason))
    table = read_candidates(candidates, ["key", "image"])
    table = table.filter(pc.is_in(table.column("key"), value_set=pa.array(wanted, pa.string())))
    images = dict(zip(table.column("key").to_pylist(), table.column("image").to_pylist(), strict=True))
    sheet = contact_sheet(rejected_rows(selection, images, per_reason), columns=per_reason)
    write_bytes_atomic(folder / "rejected.jpg", sheet_bytes(sheet))
    preview(dataset, rows=8, out=folder / "contact_sheet.jpg")


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--candidates", default="data/candidates")
    p.add_argument("--filter", default="data/curation/filter.parquet")
    p.add_argument("--dedup", default="data/curation/dedup.parquet")
    p.add_argument("--selection", default="data/curation/selection.parquet")
    p.add_argument("--dataset", default="data/dataset")
    p.add_argument("--metrics", default="reports/metrics.json")
    p.add_argument("--plots", default="reports/plots")
    p.add_argument("--pictures", default="reports", help="folder for contact_sheet.jpg and rejected.jpg")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
