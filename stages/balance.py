"""DVC stage balance: choose the dataset's identities and samples to meet balance.targets; assign class ids."""

from __future__ import annotations

import argparse
import logging

from pipeline.balance import SELECTION_FIELDS, achieved, select, target_bins
from pipeline.cli import run_stage, stage_parser
from pipeline.config import Params
from pipeline.curation import read_curation, write_curation
from pipeline.errors import PipelineError
from pipeline.faces.attributes import attribute_catalog, balance_targets
from pipeline.shards.candidates import candidate_columns, read_candidates

log = logging.getLogger("stages.balance")


def main(args: argparse.Namespace, params: Params) -> None:
    curation = read_curation(args.dedup)
    targets = balance_targets(params)
    if targets:
        columns = ["key", *(f"attr_{a}" for a in targets)]
        missing = [c for c in columns if c not in candidate_columns(args.candidates)]
        if missing:
            raise PipelineError(f"balance.targets: the candidates have no {', '.join(missing)} (run dvc repro)")
        attrs = read_candidates(args.candidates, columns).to_pandas()
        curation = curation.merge(attrs, on="key", how="left", validate="one_to_one")
    catalog = attribute_catalog(params)
    result = select(curation, params.dataset, params.balance, targets, catalog)
    write_curation(result, args.out, SELECTION_FIELDS)
    log.info(
        "balance: %d samples of %d classes selected",
        result["keep"].sum(),
        result.loc[result["keep"], "class"].nunique(),
    )
    if targets:
        bins = target_bins(targets, catalog)
        result = result.merge(curation[["key", *(f"attr_{a}" for a in targets)]], on="key")
        for b, share in zip(bins, achieved(result, bins).values(), strict=True):
            log.info("balance: %-24s target %.3f achieved %.3f", b.name, b.share, share)


def parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__)
    p.add_argument("--dedup", default="data/curation/dedup.parquet")
    p.add_argument("--candidates", default="data/candidates", help="candidate shards (attribute columns)")
    p.add_argument("--out", default="data/curation/selection.parquet")
    return p


if __name__ == "__main__":
    run_stage(main, parser())
