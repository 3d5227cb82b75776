"""Cells of interchangeable identities: the same labels for the targeted identity-level attributes and the same
(capped) counts of each sample-level label combination. Balance chooses how many to take from each cell."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Joins the sample-level labels of one sample into one joint label.
SEP = "\x1f"


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


Cell = tuple[tuple[str, ...], tuple[tuple[str, int], ...]]


@dataclass
class Pool:
    """Eligible identities (>= k kept samples), each with its cell, gathered shard by shard."""

    k: int
    identity_attrs: list[str]
    sample_attrs: list[str]
    cells: dict[Cell, int] = field(default_factory=dict)
    ids: list[np.ndarray] = field(default_factory=list)
    cell_of: list[np.ndarray] = field(default_factory=list)
    seen: int = 0

    def add(self, rows: pd.DataFrame) -> None:
        """Rows of one shard (key, identity, variant, keep, attr_*), sorted by identity and variant."""
        kept = rows[rows["keep"]]
        self.seen += rows["identity"].nunique()
        sizes = kept.groupby("identity").size()
        eligible = sizes.index[sizes >= self.k].to_numpy()
        kept = kept[kept["identity"].isin(eligible)]
        labels = [identity_labels(kept, a).reindex(eligible, fill_value="") for a in self.identity_attrs]
        id_keys = list(zip(*(lab.tolist() for lab in labels), strict=True)) if labels else [()] * len(eligible)
        multisets: dict[int, tuple[tuple[str, int], ...]] = dict.fromkeys(eligible.tolist(), ())
        if self.sample_attrs:
            counts = kept.assign(joint=joint_labels(kept, self.sample_attrs)).groupby(["identity", "joint"]).size()
            for (identity, joint), n in counts.items():
                multisets[identity] += ((joint, min(int(n), self.k)),)
        cells = [self.cells.setdefault((key, multisets[i]), len(self.cells)) for key, i in
                 zip(id_keys, eligible.tolist(), strict=True)]  # fmt: skip
        self.ids.append(eligible.astype(np.int64))
        self.cell_of.append(np.asarray(cells, np.int64))

    def eligible(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int64)
        cells = np.concatenate(self.cell_of) if self.cell_of else np.zeros(0, np.int64)
        return ids, cells


def joint_labels(rows: pd.DataFrame, attributes: list[str]) -> np.ndarray:
    values = rows[f"attr_{attributes[0]}"].astype(str)
    for a in attributes[1:]:
        values = values + SEP + rows[f"attr_{a}"].astype(str)
    return values.to_numpy()


def profiles(multiset: tuple[tuple[str, int], ...], k: int) -> list[tuple[int, ...]]:
    """Every way to pick k samples from a multiset of joint labels: counts per label, in a fixed order."""
    caps = [n for _, n in multiset]
    return [c for c in itertools.product(*(range(n + 1) for n in caps)) if sum(c) == k]
