"""Balance: choose `dataset.identities` identities x `dataset.images_per_identity` samples meeting `balance.targets`.

Without targets the lowest eligible identity ids win (stable as identities.count grows). With targets,
identities are grouped into cells: identities with the same labels for the targeted identity-level
attributes and the same (capped) counts of each sample-level label combination are interchangeable.
A small integer program (HiGHS via scipy) chooses how many identities to take from each cell with each
way of picking its k samples (a profile); hard bounds keep every bin within `balance.tolerance` and the
objective minimises the deviations from the targets. It is exact, as the per-identity program was: if
any selection meets every target at once, one exists in cell counts, and the cells are a handful to a
few hundred whatever the number of identities. Within a cell the lowest ids are taken, and within an
identity the lowest variants of each label.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from pipeline.config import BalanceParams, DatasetParams
from pipeline.curation.cells import SEP, Bin, Cell, Pool, bounds, identity_labels, joint_labels, profiles
from pipeline.curation.table import CurationWriter, along_candidates, curation_notes, read_curation
from pipeline.errors import PipelineError
from pipeline.faces.attributes import AttributeInfo

SELECTION_FIELDS = [pa.field("class", pa.int64())]
TIE_BREAK = 1e-3


class BalanceError(PipelineError):
    """The curated candidates cannot meet the requested dataset; the message says what is short."""


def target_bins(targets: dict[str, dict[str, float]], catalog: dict[str, AttributeInfo]) -> list[Bin]:
    return [Bin(a, c, catalog[a].level, p) for a, shares in targets.items() for c, p in shares.items()]


@dataclass
class Plan:
    """The chosen identities (sorted) and, per chosen identity, its samples per joint label (None = lowest k)."""

    chosen: np.ndarray
    quota: dict[int, dict[str, int]] | None
    counts: dict[str, int]


def plan_selection(pool: Pool, bins: list[Bin], dataset: DatasetParams, balance: BalanceParams) -> Plan:
    ids, cell_of = pool.eligible()
    d, k = dataset.identities, dataset.images_per_identity
    if len(ids) < d:
        raise BalanceError(
            f"dataset.identities: need {d} identities with >= {k} kept "
            f"samples, but only {len(ids)} of {pool.seen} have them after filter and dedup; "
            "raise identities.count or identities.oversample, or lower dataset.identities / dataset.images_per_identity"
        )
    if not bins:
        return Plan(np.sort(ids)[:d], None, {})
    cells = sorted(pool.cells, key=pool.cells.__getitem__)
    order = np.lexsort((ids, cell_of))
    sorted_cells = cell_of[order]
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_cells) != 0])
    members_of = {int(sorted_cells[s]): m for s, m in zip(starts, np.split(ids[order], starts[1:]), strict=True)}
    _check_feasible(pool, cells, members_of, bins, dataset, balance, len(ids))
    return _solve(pool, cells, members_of, ids, bins, dataset, balance)


def _bin_hits(pool: Pool, cell: Cell, b: Bin) -> int:
    """For an identity of this cell: 1/0 for an identity bin; for a sample bin, its most samples labelled b.cls."""
    id_labels, multiset = cell
    if b.level == "identity":
        return int(id_labels[pool.identity_attrs.index(b.attribute)] == b.cls)
    pos = pool.sample_attrs.index(b.attribute)
    return min(pool.k, sum(n for joint, n in multiset if joint.split(SEP)[pos] == b.cls))


def _check_feasible(
    pool: Pool,
    cells: list[Cell],
    members_of: dict[int, np.ndarray],
    bins: list[Bin],
    dataset: DatasetParams,
    balance: BalanceParams,
    n_eligible: int,
) -> None:
    """Each bin on its own: enough identities (or samples) carrying its label to reach its lower bound."""
    d, k = dataset.identities, dataset.images_per_identity
    problems = []
    for b in bins:
        have = sum(_bin_hits(pool, cells[c], b) * len(m) for c, m in members_of.items())
        if b.level == "identity":
            need, _ = bounds(b.share, d, balance.tolerance)
            unit = f"identities with >= {k} kept samples"
        else:
            need, _ = bounds(b.share, d * k, balance.tolerance)
            unit = f"kept samples (at most {k} per identity)"
        if have < need:
            problems.append(
                f"balance.targets.{b.attribute}.{b.cls}: needs {need} {unit} labelled {b.cls} "
                f"({b.share:.2f} of {d * (1 if b.level == 'identity' else k)}, tolerance {balance.tolerance:.2f}), "
                f"has {have} of {n_eligible} eligible identities"
            )
    if problems:
        raise BalanceError(
            "\n".join(problems) + "\n(generate more identities, use balance.mode: steer, or lower the target)"
        )


@dataclass
class _Program:
    """The cell program: one integer variable per (cell, sample profile), two deviations per bin, and the
    constraint rows as (columns, values) with their bounds."""

    variables: list[tuple[int, tuple[int, ...] | None]]
    n_bins: int
    entries: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)

    @property
    def n_x(self) -> int:
        return len(self.variables)

    def add(self, cols: np.ndarray, values: np.ndarray, lo: float, hi: float) -> None:
        self.entries.append((cols, values))
        self.lower.append(lo)
        self.upper.append(hi)

    def matrix(self) -> coo_array:
        r = np.concatenate([np.full(len(cols), i) for i, (cols, _) in enumerate(self.entries)])
        return coo_array(
            (np.concatenate([v for _, v in self.entries]), (r, np.concatenate([c for c, _ in self.entries]))),
            shape=(len(self.entries), self.n_x + 2 * self.n_bins),
        ).tocsr()


def _program(
    pool: Pool, cells: list[Cell], members_of: dict[int, np.ndarray], ids: np.ndarray, bins: list[Bin],
    dataset: DatasetParams, tolerance: float,
) -> tuple[_Program, np.ndarray]:  # fmt: skip
    """The constraints (dataset size, cell sizes, every bin within tolerance, deviations from its goal) and the
    cost (deviations, then a tie-break toward low identity ids)."""
    d, k = dataset.identities, dataset.images_per_identity
    sample_level = bool(pool.sample_attrs)
    variables = [(c, p) for c in sorted(members_of) for p in (profiles(cells[c][1], k) if sample_level else [None])]
    prog = _Program(variables, len(bins))
    n_x = prog.n_x
    every = np.arange(n_x)
    prog.add(every, np.ones(n_x), d, d)
    var_cell = np.array([c for c, _ in variables])
    if sample_level:
        for c, m in members_of.items():
            cols = np.flatnonzero(var_cell == c)
            prog.add(cols, np.ones(len(cols)), 0, len(m))
    cost = np.zeros(n_x + 2 * len(bins))
    for j, b in enumerate(bins):
        total = d if b.level == "identity" else d * k
        hits = np.array([_profile_hits(pool, cells[c], p, b) for c, p in variables], np.float64)
        lo, hi = bounds(b.share, total, tolerance)
        prog.add(every, hits, lo, hi)
        dev = n_x + 2 * j
        goal = b.share * total
        prog.add(np.r_[every, dev, dev + 1], np.r_[hits, -1.0, 1.0], goal, goal)  # count - dev+ + dev- == goal
        cost[dev : dev + 2] = 1.0 / total
    order = np.sort(ids)
    cell_rank = {c: float(np.searchsorted(order, m[:d]).mean()) / max(len(ids), 1) for c, m in members_of.items()}
    cost[:n_x] = [TIE_BREAK * cell_rank[c] / d for c, _ in variables]
    return prog, cost


def _solve(
    pool: Pool,
    cells: list[Cell],
    members_of: dict[int, np.ndarray],
    ids: np.ndarray,
    bins: list[Bin],
    dataset: DatasetParams,
    balance: BalanceParams,
) -> Plan:
    prog, cost = _program(pool, cells, members_of, ids, bins, dataset, balance.tolerance)
    n_x, n_bins = prog.n_x, len(bins)
    sizes = np.array([len(members_of[c]) for c, _ in prog.variables], np.float64)
    result = milp(
        cost,
        constraints=LinearConstraint(prog.matrix(), np.array(prog.lower), np.array(prog.upper)),
        integrality=np.r_[np.ones(n_x), np.zeros(2 * n_bins)],
        bounds=Bounds(np.zeros(n_x + 2 * n_bins), np.r_[sizes, np.full(2 * n_bins, np.inf)]),
        options={"time_limit": balance.time_limit, "mip_rel_gap": 1e-6},
    )
    if result.x is None:
        why = "no selection meets every target at once" if result.status == 2 else result.message
        raise BalanceError(
            f"balance.targets: {why} ({', '.join(f'{b.name} {b.share:.2f}' for b in bins)}); generate more "
            "identities, use balance.mode: steer, widen balance.tolerance, or raise balance.time_limit"
        )
    return _plan(pool, cells, members_of, prog.variables, np.rint(result.x[:n_x]).astype(np.int64), bins)


def _plan(
    pool: Pool, cells: list[Cell], members_of: dict[int, np.ndarray],
    variables: list[tuple[int, tuple[int, ...] | None]], taken: np.ndarray, bins: list[Bin],
) -> Plan:  # fmt: skip
    """The lowest ids of each cell, as many as the solution takes, with their sample quotas and bin counts."""
    chosen: list[int] = []
    quota: dict[int, dict[str, int]] = {}
    used = dict.fromkeys(members_of, 0)
    for (c, p), m in zip(variables, taken.tolist(), strict=True):
        picked = members_of[c][used[c] : used[c] + m].tolist()
        used[c] += m
        chosen += picked
        if p is not None:
            labels = [joint for joint, _ in cells[c][1]]
            quota.update({i: dict(zip(labels, p, strict=True)) for i in picked})
    counts = {
        b.name: int(sum(_profile_hits(pool, cells[c], p, b) * m for (c, p), m in zip(variables, taken, strict=True)))
        for b in bins
    }
    return Plan(np.sort(np.asarray(chosen, np.int64)), quota if pool.sample_attrs else None, counts)


def _profile_hits(pool: Pool, cell: Cell, profile: tuple[int, ...] | None, b: Bin) -> int:
    """What one identity of `cell` picked by `profile` adds to bin b's count."""
    if b.level == "identity":
        return _bin_hits(pool, cell, b)
    if profile is None:
        return 0
    pos = pool.sample_attrs.index(b.attribute)
    return sum(n for (joint, _), n in zip(cell[1], profile, strict=True) if joint.split(SEP)[pos] == b.cls)


def apply_plan(rows: pd.DataFrame, plan: Plan, eligible: np.ndarray, k: int, sample_attrs: list[str]) -> pd.DataFrame:
    """One shard's selection rows: keep = selected, `class` (contiguous in identity order, -1 = not selected)
    and the balance reasons (too_few_samples, surplus_identity, surplus_sample)."""
    out = rows[["key", "identity", "variant", "keep", "reason"]].copy()
    ids = out["identity"].to_numpy()
    was_kept = out["keep"].to_numpy(bool)
    in_eligible = np.isin(ids, eligible)
    in_chosen = np.isin(ids, plan.chosen)
    candidates = was_kept & in_chosen
    frame = rows.loc[candidates, ["identity", "variant"]]
    if plan.quota is None:
        rank = frame.groupby("identity").cumcount().to_numpy()
        picked = rank < k
    else:
        joint = joint_labels(rows.loc[candidates], sample_attrs)
        rank = frame.assign(joint=joint).groupby(["identity", "joint"]).cumcount().to_numpy()
        allowed = np.array([plan.quota[i].get(j, 0) for i, j in zip(frame["identity"].tolist(), joint, strict=True)])
        picked = rank < allowed
    selected = np.zeros(len(out), bool)
    selected[np.flatnonzero(candidates)[picked]] = True
    reason = out["reason"].to_numpy(object).copy()
    reason[was_kept & ~in_eligible] = "too_few_samples"
    reason[was_kept & in_eligible & ~in_chosen] = "surplus_identity"
    reason[was_kept & in_chosen & ~selected] = "surplus_sample"
    out["reason"] = reason
    out["keep"] = selected
    out["class"] = np.where(selected, np.searchsorted(plan.chosen, ids), -1).astype(np.int64)
    return out


def _attributes(bins: list[Bin]) -> tuple[list[str], list[str]]:
    identity = sorted({b.attribute for b in bins if b.level == "identity"})
    sample = sorted({b.attribute for b in bins if b.level == "sample"})
    return identity, sample


def select(
    curation: pd.DataFrame,
    dataset: DatasetParams,
    balance: BalanceParams | None = None,
    targets: dict[str, dict[str, float]] | None = None,
    catalog: dict[str, AttributeInfo] | None = None,
) -> pd.DataFrame:
    """Selection of an in-memory table (one 'shard'): the stage's decisions, for tests and benchmarks.

    `curation` has key, identity, variant, keep, reason and an `attr_<name>` column per targeted attribute."""
    df = curation.sort_values(["identity", "variant"], kind="stable").reset_index(drop=True)
    bins = target_bins(targets or {}, catalog or {})
    pool = Pool(dataset.images_per_identity, *_attributes(bins))
    pool.add(df)
    plan = plan_selection(pool, bins, dataset, balance or BalanceParams())
    return apply_plan(df, plan, pool.eligible()[0], dataset.images_per_identity, pool.sample_attrs)


def run_balance(
    candidates: str | Path,
    dedup_path: str | Path,
    dataset: DatasetParams,
    balance: BalanceParams,
    bins: list[Bin],
    out: str | Path,
) -> tuple[CurationWriter, Plan]:
    """The balance stage: cells gathered shard by shard, one small program, then the selection shard by shard."""
    curation = read_curation(dedup_path)
    columns = [f"attr_{a}" for a in sorted({b.attribute for b in bins})]
    k = dataset.images_per_identity
    pool = Pool(k, *_attributes(bins))
    for frame in _frames(curation, candidates, columns):
        pool.add(frame)
    plan = plan_selection(pool, bins, dataset, balance)
    eligible = pool.eligible()[0]
    with CurationWriter(out, SELECTION_FIELDS, curation_notes(curation)) as writer:  # dedup's search report on
        for frame in _frames(curation, candidates, columns):
            writer.write(apply_plan(frame, plan, eligible, k, pool.sample_attrs))
    return writer, plan


def _frames(curation: pa.Table, candidates: str | Path, columns: list[str]) -> Iterator[pd.DataFrame]:
    for shard, rows in along_candidates(curation, candidates, columns):
        frame = rows.to_pandas()
        for c in columns:
            frame[c] = shard.column(c).to_numpy(zero_copy_only=False)
        yield frame


def class_shares(rows: pd.DataFrame, attribute: str, level: str) -> pd.Series:
    """Share of each class: of identities (majority label of their rows) or of samples ("" = unlabelled)."""
    if level == "identity":
        return identity_labels(rows, attribute).value_counts() / max(rows["identity"].nunique(), 1)
    return rows[f"attr_{attribute}"].value_counts() / max(len(rows), 1)


def achieved(selection: pd.DataFrame, bins: list[Bin]) -> dict[str, float]:
    """Share of each bin in the selected samples (identity level: share of selected identities)."""
    chosen = selection[selection["keep"]]
    return {b.name: float(class_shares(chosen, b.attribute, b.level).get(b.cls, 0.0)) for b in bins}
