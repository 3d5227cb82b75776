"""DVC stage report: metrics.json (counts per stage and reason) and plot data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.cli import run_stage, stage_parser
from pipeline.config import Params
from pipeline.curation import read_curation
from pipeline.faces.quality import QUALITY_COLUMNS
from pipeline.report.metrics import build_metrics, similarity_report, write_quality_histograms, write_reason_plot
from pipeline.shards.candidates import MANIFEST, read_candidates
from pipeline.shards.io import write_json_atomic


def main(args: argparse.Namespace, params: Params) -> None:
    filtered = read_curation(args.filter)
    metrics = build_metrics(
        json.loads((Path(args.candidates) / MANIFEST).read_text()),
        filtered,
        read_curation(args.dedup),
        read_curation(args.selection),
        json.loads((Path(args.dataset) / "manifest.json").read_text()),
    )
    dataset = pq.read_table(Path(args.dataset) / "metadata.parquet", columns=["identity", "embedding"])
    metrics["identity"] = similarity_report(
        np.stack(dataset.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32),
        dataset.column("identity").to_numpy(),
        Path(args.plots),
    )
    write_json_atomic(args.metrics, metrics)
    write_reason_plot(metrics, Path(args.plots) / "rejections.csv")
    scores = read_candidates(args.candidates, ["key", *QUALITY_COLUMNS]).to_pandas()
    kept = scores["key"].map(filtered.set_index("key")["keep"]).fillna(False).astype(bool)
    write_quality_histograms(scores, kept, Path(args.plots) / "quality")


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--candidates", default="data/candidates")
    p.add_argument("--filter", default="data/curation/filter.parquet")
    p.add_argument("--dedup", default="data/curation/dedup.parquet")
    p.add_argument("--selection", default="data/curation/selection.parquet")
    p.add_argument("--dataset", default="data/dataset")
    p.add_argument("--metrics", default="reports/metrics.json")
    p.add_argument("--plots", default="reports/plots")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
