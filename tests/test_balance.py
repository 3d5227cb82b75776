"""Balance: exact counts, contiguous classes, reasons for everything dropped, a clear error when short."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import BalanceParams, DatasetParams
from pipeline.curation.balance import BalanceError, achieved, select, target_bins
from pipeline.curation.cells import bounds
from pipeline.faces.attributes import AttributeInfo


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


def labelled(n_ids: int, variants: int, hair: Callable, yaw: Callable) -> pd.DataFrame:
    """All samples kept; identity-level `attr_hair` and sample-level `attr_yaw_bin` from the given functions."""
    rows = []
    for i in range(n_ids):
        for v in range(variants):
            rows.append({"key": f"{i:09d}_{v:03d}", "identity": i, "variant": v, "keep": True, "reason": "",
                         "attr_hair": hair(i), "attr_yaw_bin": yaw(i, v)})  # fmt: skip
    return pd.DataFrame(rows)


CATALOG = {
    "hair": AttributeInfo("identity", ("dark", "light")),
    "yaw_bin": AttributeInfo("sample", ("left", "frontal", "right")),
}


def greedy_select(df: pd.DataFrame, n_ids: int, k: int, quotas: dict[str, dict[str, int]]) -> set[int] | None:
    """A quota-aware greedy pass, lowest identity first: take an identity when its identity-level bins have room
    and k of its samples fit the sample-level bins' remaining room. The chosen ids, or None when it gets stuck."""
    room = {a: dict(q) for a, q in quotas.items()}
    chosen: set[int] = set()
    for identity, rows in df.groupby("identity", sort=True):
        hair = rows["attr_hair"].iloc[0]
        if len(chosen) == n_ids or room["hair"][hair] == 0:
            continue
        left, picked = dict(room["yaw_bin"]), 0
        for b in rows["attr_yaw_bin"]:
            if picked < k and left[b] > 0:
                left[b] -= 1
                picked += 1
        if picked == k:
            chosen.add(int(identity))
            room["hair"][hair] -= 1
            room["yaw_bin"] = left
    return chosen if len(chosen) == n_ids else None


def test_targets_met_where_a_greedy_pass_paints_itself_into_a_corner() -> None:
    """Blocks of three: a dark identity with frontal samples, a dark one with left samples, a light one with
    frontal samples. Lowest-id-first fills the dark quota with the frontal darks, which uses up the frontal
    quota the light identities need; the exact solution takes the left darks instead."""
    kinds = [("dark", "frontal"), ("dark", "left"), ("light", "frontal")]
    df = labelled(15, 2, hair=lambda i: kinds[i % 3][0], yaw=lambda i, v: kinds[i % 3][1])
    targets = {"hair": {"dark": 0.5, "light": 0.5}, "yaw_bin": {"left": 0.5, "frontal": 0.5, "right": 0.0}}
    quotas = {"hair": {"dark": 5, "light": 5}, "yaw_bin": {"left": 10, "frontal": 10, "right": 0}}
    assert greedy_select(df, 10, 2, quotas) is None  # the trap holds: greedy gets stuck

    out = select(df, DatasetParams(identities=10, images_per_identity=2), BalanceParams(tolerance=0.0),
                 targets, CATALOG)  # fmt: skip
    chosen = out[out["keep"]].merge(df[["key", "attr_hair", "attr_yaw_bin"]], on="key")
    assert chosen["identity"].nunique() == 10 and chosen.groupby("identity").size().eq(2).all()
    assert chosen.drop_duplicates("identity")["attr_hair"].value_counts().to_dict() == {"dark": 5, "light": 5}
    assert chosen["attr_yaw_bin"].value_counts().to_dict() == {"left": 10, "frontal": 10}
    assert sorted(chosen["class"].unique()) == list(range(10))


def test_the_greedy_reference_solves_what_it_can() -> None:
    """The reference greedy pass is not a straw man: with room for the frontal darks it succeeds."""
    kinds = [("dark", "frontal"), ("dark", "left"), ("light", "frontal")]
    df = labelled(15, 2, hair=lambda i: kinds[i % 3][0], yaw=lambda i, v: kinds[i % 3][1])
    quotas = {"hair": {"dark": 5, "light": 5}, "yaw_bin": {"left": 4, "frontal": 16, "right": 0}}
    assert greedy_select(df, 10, 2, quotas) == {0, 1, 2, 3, 4, 5, 6, 8, 11, 14}


@settings(max_examples=25, deadline=None)
@given(share=st.integers(2, 8), seed=st.integers(0, 1000))
def test_identity_target_within_tolerance_whenever_feasible(share: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    light = rng.random(60) < 0.5
    df = labelled(60, 3, hair=lambda i: "light" if light[i] else "dark", yaw=lambda i, v: "frontal")
    target = share / 10
    params = DatasetParams(identities=20, images_per_identity=2)
    balance = BalanceParams(tolerance=0.02)
    try:
        out = select(df, params, balance, {"hair": {"light": target, "dark": 1 - target}}, CATALOG)
    except BalanceError as err:
        need = bounds(target, 20, 0.02)[0]
        assert need > light.sum() or 20 - bounds(target, 20, 0.02)[1] > (~light).sum(), str(err)
        return
    chosen = out[out["keep"]].merge(df[["key", "attr_hair"]], on="key").drop_duplicates("identity")
    assert abs((chosen["attr_hair"] == "light").mean() - target) <= 0.02 + 1e-9


def test_impossible_target_names_the_bin_what_it_has_and_needs() -> None:
    df = labelled(30, 3, hair=lambda i: "light" if i < 6 else "dark", yaw=lambda i, v: "frontal")
    with pytest.raises(BalanceError) as err:
        select(df, DatasetParams(identities=20, images_per_identity=2), BalanceParams(),
               {"hair": {"light": 0.7, "dark": 0.3}}, CATALOG)  # fmt: skip
    message = str(err.value)
    assert "balance.targets.hair.light: needs 14 identities" in message
    assert "has 6 of 30 eligible identities" in message and "steer" in message


def test_impossible_sample_target_counts_at_most_k_per_identity() -> None:
    df = labelled(10, 4, hair=lambda i: "dark", yaw=lambda i, v: "left" if i < 2 else "right")
    with pytest.raises(BalanceError, match=r"yaw_bin.left: needs 8 kept samples \(at most 2 per identity\).*has 4"):
        select(df, DatasetParams(identities=5, images_per_identity=2), BalanceParams(tolerance=0.0),
               {"yaw_bin": {"left": 0.8, "right": 0.2}}, CATALOG)  # fmt: skip


def test_achieved_shares() -> None:
    df = labelled(4, 2, hair=lambda i: "light" if i < 3 else "dark", yaw=lambda i, v: "left" if v else "right")
    bins = target_bins({"hair": {"light": 0.75, "dark": 0.25}, "yaw_bin": {"left": 0.5}}, CATALOG)
    assert achieved(df, bins) == {"hair=light": 0.75, "hair=dark": 0.25, "yaw_bin=left": 0.5}
