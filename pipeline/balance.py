"""Balance: choose `dataset.identities` identities with `dataset.images_per_identity` samples each."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.config import DatasetParams, PipelineError

SELECTION_FIELDS = [pa.field("class", pa.int64())]


class BalanceError(PipelineError):
    """The curated candidates cannot meet the requested dataset; the message says what is short."""


def select(curation: pd.DataFrame, dataset: DatasetParams) -> pd.DataFrame:
    """Lowest identity ids first (stable as identities.count grows); per identity the lowest variants.

    Adds `class`: contiguous 0..N-1 in identity order, -1 for samples not selected.
    """
    df = curation.sort_values(["identity", "variant"], kind="stable").reset_index(drop=True)
    kept = df[df["keep"]]
    per_identity = kept.groupby("identity").size()
    eligible = per_identity.index[per_identity >= dataset.images_per_identity].to_numpy()
    if len(eligible) < dataset.identities:
        raise BalanceError(
            f"dataset.identities: need {dataset.identities} identities with >= {dataset.images_per_identity} kept "
            f"samples, but only {len(eligible)} of {df['identity'].nunique()} have them after filter and dedup; "
            "raise identities.count or identities.oversample, or lower dataset.identities / dataset.images_per_identity"
        )
    chosen = eligible[: dataset.identities]
    rank_in_identity = kept.groupby("identity").cumcount()
    selected_idx = kept.index[
        kept["identity"].isin(chosen).to_numpy() & (rank_in_identity < dataset.images_per_identity).to_numpy()
    ]
    out = df[["key", "identity", "variant", "keep", "reason"]].copy()
    was_kept = out["keep"].to_numpy().copy()
    selected = np.zeros(len(out), bool)
    selected[selected_idx] = True
    in_chosen = out["identity"].isin(chosen).to_numpy()
    in_eligible = out["identity"].isin(eligible).to_numpy()
    out.loc[was_kept & ~in_eligible, "reason"] = "too_few_samples"
    out.loc[was_kept & in_eligible & ~in_chosen, "reason"] = "surplus_identity"
    out.loc[was_kept & in_chosen & ~selected, "reason"] = "surplus_sample"
    out["keep"] = selected
    classes = pd.Series(np.arange(len(chosen)), index=chosen)
    out["class"] = np.where(selected, out["identity"].map(classes).fillna(-1).to_numpy(), -1).astype(np.int64)
    return out
