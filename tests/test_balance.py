"""Balance: exact counts, contiguous classes, reasons for everything dropped, a clear error when short."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.balance import BalanceError, select
from pipeline.config import DatasetParams


def curation(kept_per_identity: dict[int, int], variants: int = 5) -> pd.DataFrame:
    rows = []
    for identity, n_kept in kept_per_identity.items():
        for v in range(variants):
            keep = v < n_kept
            rows.append({"key": f"{identity:09d}_{v:03d}", "identity": identity, "variant": v, "keep": keep,
                         "reason": "" if keep else "no_face"})  # fmt: skip
    return pd.DataFrame(rows)


def test_select_counts_classes_and_reasons() -> None:
    df = curation({0: 5, 1: 2, 2: 4, 3: 5, 4: 3})
    out = select(df, DatasetParams(identities=2, images_per_identity=3))
    chosen = out[out["keep"]]
    assert sorted(chosen["identity"].unique()) == [0, 2]  # lowest eligible ids (1 has too few)
    assert chosen.groupby("identity").size().tolist() == [3, 3]
    assert sorted(chosen["class"].unique()) == [0, 1]
    assert (out.loc[~out["keep"], "class"] == -1).all()
    reasons = out.set_index("key")["reason"]
    assert reasons["000000001_000"] == "too_few_samples"
    assert reasons["000000003_000"] == "surplus_identity"
    assert reasons["000000000_004"] == "surplus_sample"
    assert reasons["000000000_000"] == ""


def test_too_few_identities_is_a_clear_error() -> None:
    with pytest.raises(
        BalanceError, match=r"dataset.identities: need 3 identities with >= 4 kept samples, but only 2 of 3"
    ):
        select(curation({0: 5, 1: 4, 2: 1}), DatasetParams(identities=3, images_per_identity=4))
