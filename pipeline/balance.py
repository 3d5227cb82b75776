"""Balance: choose `dataset.identities` identities x `dataset.images_per_identity` samples meeting `balance.targets`.

Without targets the lowest identity ids win (stable as identities.count grows). With targets the
choice is a mixed-integer program (HiGHS via scipy): binary x_i per eligible identity, binary y_s
per kept sample when sample-level targets exist, and per bin the deviation from its target share;
hard bounds keep every bin within `balance.tolerance`, the objective minimises the deviations and,
as a tie-break, prefers low identity ids and low variants. Unlike a greedy pass it cannot paint
itself into a corner: if any selection meets every target at once, it finds one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array, vstack

from pipeline.config import BalanceParams, DatasetParams
from pipeline.errors import PipelineError
from pipeline.faces.attributes import AttributeInfo

SELECTION_FIELDS = [pa.field("class", pa.int64())]
TIE_BREAK = 1e-3


class BalanceError(PipelineError):
    """The curated candidates cannot meet the requested dataset; the message says what is short."""


@dataclass(frozen=True)
class Bin:
    """One (attribute, class) target: a share of identities (identity level) or of samples (sample level)."""

    attribute: str
    cls: str
    level: str
    share: float

    @property
    def name(self) -> str:
        return f"{self.attribute}={self.cls}"


def target_bins(targets: dict[str, dict[str, float]], catalog: dict[str, AttributeInfo]) -> list[Bin]:
    return [Bin(a, c, catalog[a].level, p) for a, shares in targets.items() for c, p in shares.items()]


def identity_labels(kept: pd.DataFrame, attribute: str) -> pd.Series:
    """An identity's label: the most frequent among its kept samples (ties: the lowest variant's); "" = none."""
    column = f"attr_{attribute}"
    labelled = kept[kept[column] != ""]
    counts = labelled.groupby(["identity", column], sort=False).agg(n=("variant", "size"), first=("variant", "min"))
    counts = counts.reset_index().sort_values(["identity", "n", "first"], ascending=[True, False, True])
    return counts.drop_duplicates("identity").set_index("identity")[column]


def bounds(share: float, total: int, tolerance: float) -> tuple[int, int]:
    """Smallest and largest count whose share of `total` is within tolerance of `share` (at least the nearest)."""
    lo = math.ceil((share - tolerance) * total - 1e-9)
    hi = math.floor((share + tolerance) * total + 1e-9)
    nearest = round(share * total)
    return max(0, min(lo, nearest)), min(total, max(hi, nearest))


def select(
    curation: pd.DataFrame,
    dataset: DatasetParams,
    balance: BalanceParams | None = None,
    targets: dict[str, dict[str, float]] | None = None,
    catalog: dict[str, AttributeInfo] | None = None,
) -> pd.DataFrame:
    """Adds `class` (contiguous 0..N-1 in identity order, -1 when not selected) and the balance reasons.

    `curation` has key, identity, variant, keep, reason and an `attr_<name>` column per targeted attribute.
    """
    df = curation.sort_values(["identity", "variant"], kind="stable").reset_index(drop=True)
    k = dataset.images_per_identity
    kept = df[df["keep"]]
    per_identity = kept.groupby("identity").size()
    eligible = per_identity.index[per_identity >= k].to_numpy()
    if len(eligible) < dataset.identities:
        raise BalanceError(
            f"dataset.identities: need {dataset.identities} identities with >= {k} kept "
            f"samples, but only {len(eligible)} of {df['identity'].nunique()} have them after filter and dedup; "
            "raise identities.count or identities.oversample, or lower dataset.identities / dataset.images_per_identity"
        )
    pool = kept[kept["identity"].isin(eligible)]
    bins = target_bins(targets or {}, catalog or {})
    if bins:
        chosen, samples = _optimise(pool, eligible, bins, dataset, balance or BalanceParams())
    else:
        chosen = eligible[: dataset.identities]
        samples = _lowest_variants(pool, chosen, k)
    return _with_reasons(df, eligible, chosen, samples)


def _with_reasons(df: pd.DataFrame, eligible: np.ndarray, chosen: np.ndarray, samples: pd.Index) -> pd.DataFrame:
    out = df[["key", "identity", "variant", "keep", "reason"]].copy()
    was_kept = out["keep"].to_numpy().copy()
    selected = np.zeros(len(out), bool)
    selected[np.asarray(samples, dtype=np.int64)] = True
    in_chosen = out["identity"].isin(chosen).to_numpy()
    in_eligible = out["identity"].isin(eligible).to_numpy()
    out.loc[was_kept & ~in_eligible, "reason"] = "too_few_samples"
    out.loc[was_kept & in_eligible & ~in_chosen, "reason"] = "surplus_identity"
    out.loc[was_kept & in_chosen & ~selected, "reason"] = "surplus_sample"
    out["keep"] = selected
    classes = pd.Series(np.arange(len(chosen)), index=np.sort(chosen))
    out["class"] = np.where(selected, out["identity"].map(classes).fillna(-1).to_numpy(), -1).astype(np.int64)
    return out


def _optimise(
    pool: pd.DataFrame, eligible: np.ndarray, bins: list[Bin], dataset: DatasetParams, balance: BalanceParams
) -> tuple[np.ndarray, pd.Index]:
    """Solve the selection program; returns the chosen identities and the row labels of the chosen samples."""
    n_id, k, d = len(eligible), dataset.images_per_identity, dataset.identities
    id_pos = pd.Series(np.arange(n_id), index=eligible)
    sample_bins = [b for b in bins if b.level == "sample"]
    use_samples = bool(sample_bins)
    n_s = len(pool) if use_samples else 0
    n_bins = len(bins)
    n_vars = n_id + n_s + 2 * n_bins  # x, y, deviation+ and deviation- per bin
    labels = {b.attribute: identity_labels(pool, b.attribute) for b in bins if b.level == "identity"}
    _check_feasible(pool, eligible, bins, labels, dataset, balance)

    rows: list[coo_array] = []
    lower: list[float] = []
    upper: list[float] = []

    def add(cols: np.ndarray, values: np.ndarray, lo: float, hi: float) -> None:
        rows.append(coo_array((values, (np.zeros(len(cols), np.int64), cols)), shape=(1, n_vars)))
        lower.append(lo)
        upper.append(hi)

    add(np.arange(n_id), np.ones(n_id), d, d)
    if use_samples:
        owner = id_pos[pool["identity"].to_numpy()].to_numpy()
        # per identity: sum of its y - k x_i == 0
        r = np.concatenate([owner, np.arange(n_id)])
        c = np.concatenate([n_id + np.arange(n_s), np.arange(n_id)])
        v = np.concatenate([np.ones(n_s), np.full(n_id, -float(k))])
        rows.append(coo_array((v, (r, c)), shape=(n_id, n_vars)))
        lower += [0.0] * n_id
        upper += [0.0] * n_id
    cost = np.zeros(n_vars)
    for j, b in enumerate(bins):
        if b.level == "identity":
            members = id_pos[labels[b.attribute].index[labels[b.attribute] == b.cls]].to_numpy()
            total, cols = d, members
        else:
            members = np.flatnonzero(pool[f"attr_{b.attribute}"].to_numpy() == b.cls)
            total, cols = d * k, n_id + members
        lo, hi = bounds(b.share, total, balance.tolerance)
        add(cols, np.ones(len(cols)), lo, hi)
        dev = n_id + n_s + 2 * j
        # count - dev+ + dev- == share * total
        goal = b.share * total
        add(np.append(cols, [dev, dev + 1]), np.append(np.ones(len(cols)), [-1.0, 1.0]), goal, goal)
        cost[dev : dev + 2] = 1.0 / total
    rank = np.arange(n_id) / max(n_id, 1)
    cost[:n_id] = TIE_BREAK * rank / d
    if use_samples:
        cost[n_id : n_id + n_s] = TIE_BREAK * pool["variant"].to_numpy() / (d * k * 1000.0)
    integrality = np.zeros(n_vars)
    integrality[: n_id + n_s] = 1
    var_bounds = Bounds(np.zeros(n_vars), np.r_[np.ones(n_id + n_s), np.full(2 * n_bins, np.inf)])
    constraint = LinearConstraint(vstack(rows).tocsr(), np.array(lower), np.array(upper))
    result = milp(
        cost,
        constraints=constraint,
        integrality=integrality,
        bounds=var_bounds,
        options={"time_limit": balance.time_limit, "mip_rel_gap": 1e-6},
    )
    if result.x is None:
        why = "no selection meets every target at once" if result.status == 2 else result.message
        raise BalanceError(
            f"balance.targets: {why} ({', '.join(f'{b.name} {b.share:.2f}' for b in bins)}); generate more "
            "identities, use balance.mode: steer, widen balance.tolerance, or raise balance.time_limit"
        )
    x = result.x[:n_id] > 0.5
    chosen = eligible[x]
    samples = pool.index[result.x[n_id : n_id + n_s] > 0.5] if use_samples else _lowest_variants(pool, chosen, k)
    return chosen, samples


def _lowest_variants(pool: pd.DataFrame, chosen: np.ndarray, k: int) -> pd.Index:
    """Row labels of each chosen identity's first k kept samples (pool is sorted by identity, variant)."""
    in_chosen = pool[pool["identity"].isin(chosen)]
    return in_chosen.index[(in_chosen.groupby("identity").cumcount() < k).to_numpy()]


def _check_feasible(
    pool: pd.DataFrame,
    eligible: np.ndarray,
    bins: list[Bin],
    labels: dict[str, pd.Series],
    dataset: DatasetParams,
    balance: BalanceParams,
) -> None:
    """Each bin on its own: enough identities (or samples) carrying its label to reach its lower bound."""
    d, k = dataset.identities, dataset.images_per_identity
    problems = []
    for b in bins:
        if b.level == "identity":
            have = int((labels[b.attribute] == b.cls).sum())
            need, _ = bounds(b.share, d, balance.tolerance)
            unit = f"identities with >= {k} kept samples"
        else:
            hits = (pool[f"attr_{b.attribute}"] == b.cls).groupby(pool["identity"]).sum()
            have = int(np.minimum(hits, k).sum())
            need, _ = bounds(b.share, d * k, balance.tolerance)
            unit = f"kept samples (at most {k} per identity)"
        if have < need:
            problems.append(
                f"balance.targets.{b.attribute}.{b.cls}: needs {need} {unit} labelled {b.cls} "
                f"({b.share:.2f} of {d * (1 if b.level == 'identity' else k)}, tolerance {balance.tolerance:.2f}), "
                f"has {have} of {len(eligible)} eligible identities"
            )
    if problems:
        raise BalanceError(
            "\n".join(problems) + "\n(generate more identities, use balance.mode: steer, or lower the target)"
        )


def class_shares(rows: pd.DataFrame, attribute: str, level: str) -> pd.Series:
    """Share of each class: of identities (majority label of their rows) or of samples ("" = unlabelled)."""
    if level == "identity":
        return identity_labels(rows, attribute).value_counts() / max(rows["identity"].nunique(), 1)
    return rows[f"attr_{attribute}"].value_counts() / max(len(rows), 1)


def achieved(selection: pd.DataFrame, bins: list[Bin]) -> dict[str, float]:
    """Share of each bin in the selected samples (identity level: share of selected identities)."""
    chosen = selection[selection["keep"]]
    return {b.name: float(class_shares(chosen, b.attribute, b.level).get(b.cls, 0.0)) for b in bins}
