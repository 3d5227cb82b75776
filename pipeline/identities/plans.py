"""Latent plans: which (identity, variant) pairs a shard renders, with which latent moves, in what order.

A plan is pure over `render(identities, variants, **rows)`, the device half of the face pass (it yields
candidate columns batch by batch; `rows` are `Latents.ws`'s per-sample moves: offsets, tries, edits), and
over `Latents` for canonical ws. Plans yield parts of the shard's final rows in any order (the caller sorts
them into candidate order):

- `plain`: every pair once (style mixing and jitter live in the latents themselves);
- `constructed`: canonicals chosen by in-shard separation (identities/separation.py), then variants edited
  along calibrated directions and shrunk until they keep their identity (identities/variation.py);
- `steered`: identities in chunks moved toward the attribute bins the shard lacks (identities/steering.py),
  each chunk rendered by `plain` or `constructed`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.identities.sampling import Latents
from pipeline.identities.separation import separate
from pipeline.identities.steering import ShardSteerer
from pipeline.identities.variation import Regression, cosines, edit_scales, edit_steps, edit_targets, shrink
from pipeline.shards.columns import Columns, concat, concat_columns, select_rows

Render = Callable[..., Iterator[Columns]]


@dataclass(frozen=True)
class PlanConfig:
    """What the plans read of params: identities per shard slot, separation, edits and their check."""

    seed: int
    variants_per_identity: int
    separation: float | None
    separation_tries: int
    edits: dict[str, tuple[float, float]]
    edit_steps: int
    min_identity_cosine: float


def pairs(identities: np.ndarray, variants_per: int) -> tuple[np.ndarray, np.ndarray]:
    """(identity, variant) for every candidate of `identities`, identity-major."""
    return np.repeat(identities, variants_per), np.tile(np.arange(variants_per, dtype=np.int64), len(identities))


def plain(
    render: Render, identities: np.ndarray, variants_per: int, offsets: np.ndarray | None = None
) -> Iterator[Columns]:
    """Every candidate of `identities` in candidate order; `offsets` [n, w_dim] move each identity (steering)."""
    ids, var = pairs(identities, variants_per)
    rows = {} if offsets is None else {"offsets": np.repeat(offsets, variants_per, 0)}
    yield from render(ids, var, **rows)


def _embeddings(columns: list[Columns]) -> np.ndarray:
    return np.stack(concat([c["embedding"] for c in columns])).astype(np.float32)


def _canonicals(
    render: Render, identities: np.ndarray, cfg: PlanConfig, steer: dict[str, np.ndarray]
) -> tuple[Columns, np.ndarray, dict[str, np.ndarray]]:
    """The identities' canonical rows, the latent try each keeps, and the separation columns."""
    n = len(identities)
    if cfg.separation is None:
        tries = np.zeros(n, np.int64)
        canon = concat_columns(list(render(identities, np.zeros(n, np.int64), tries=tries, **steer)))
        return canon, tries, {"sep_try": tries.astype(np.int32)}
    renders: list[Columns] = []

    def embed(slot_tries: list[tuple[int, int]]) -> np.ndarray:
        slots = np.array([k for k, _ in slot_tries], np.int64)
        attempt = np.array([t for _, t in slot_tries], np.int64)
        new = list(render(identities[slots], np.zeros(len(slots), np.int64), tries=attempt))
        renders.extend(new)
        return _embeddings(new)

    chosen = separate(n, cfg.separation_tries, cfg.separation, embed)
    sep = {
        "sep_try": chosen.tries.astype(np.int32),
        "sep_ok": chosen.separated,
        "sep_cosine": np.where(np.isfinite(chosen.max_cosine), chosen.max_cosine, np.nan).astype(np.float32),
    }
    return select_rows(concat_columns(renders), chosen.rows), chosen.tries, sep


def _edit_columns(scale: np.ndarray, cosine: np.ndarray, targets: dict[str, np.ndarray]) -> Columns:
    """edit_scale (the share of the move kept: 1, ... 0), edit_cosine (embedding cosine to the canonical; 1 for
    it), edit_<attribute> (the target drawn; NaN for canonicals)."""
    columns = {"edit_scale": np.asarray(scale, np.float32), "edit_cosine": np.asarray(cosine, np.float32)}
    return columns | {f"edit_{a}": np.asarray(t, np.float32) for a, t in targets.items()}


def constructed(
    render: Render,
    latents: Latents,
    identities: np.ndarray,
    cfg: PlanConfig,
    regressions: dict[str, Regression],
    offsets: np.ndarray | None = None,
) -> Iterator[Columns]:
    """Canonicals of the separated identities first, then every variant at the largest scale of its edit that
    keeps it the same person (or plainly, without edits). `offsets` [n, w_dim]: steering's moves (never with
    separation)."""
    n = len(identities)
    steer = {} if offsets is None else {"offsets": offsets}
    canon, tries, sep = _canonicals(render, identities, cfg, steer)
    canonical_embeddings = np.stack(canon["embedding"])
    canon |= sep
    if cfg.edits:
        canon |= _edit_columns(np.zeros(n), np.ones(n), {a: np.full(n, np.nan) for a in cfg.edits})
    yield canon
    vp = cfg.variants_per_identity
    vids, vvar = np.repeat(identities, vp - 1), np.tile(np.arange(1, vp, dtype=np.int64), n)
    slot = np.repeat(np.arange(n), vp - 1)
    vsep = {k: v[slot] for k, v in sep.items()}
    vsteer = {} if offsets is None else {"offsets": offsets[slot]}
    if not cfg.edits:
        lo = 0
        for columns in render(vids, vvar, tries=tries[slot], **vsteer):
            rows = np.arange(lo, lo + len(columns["key"]))
            lo += len(rows)
            yield columns | {k: v[rows] for k, v in vsep.items()}
        return
    w0 = latents.ws(identities, np.zeros(n, np.int64), tries=tries, **steer)[:, 0].float().cpu().numpy()
    targets = edit_targets(cfg.seed, dict(cfg.edits), vids, vvar, vp)
    steps = edit_steps(w0[slot], targets, regressions)

    def evaluate(rows: np.ndarray, scale: float) -> Iterator[tuple[np.ndarray, np.ndarray, Columns]]:
        lo = 0
        moved = {k: v[rows] for k, v in vsteer.items()}
        for columns in render(vids[rows], vvar[rows], tries=tries[slot[rows]], edits=steps[rows] * scale, **moved):
            batch = rows[lo : lo + len(columns["key"])]
            lo += len(batch)
            yield batch, cosines(np.stack(columns["embedding"]), canonical_embeddings[slot[batch]]), columns

    scales = edit_scales(cfg.edit_steps)
    for rows, scale, cos, columns, kept in shrink(len(vids), scales, cfg.min_identity_cosine, evaluate):
        extra = {k: v[rows] for k, v in vsep.items()} | _edit_columns(
            np.full(len(rows), scale), cos, {a: t[rows] for a, t in targets.items()}
        )
        yield select_rows(columns, kept) | extra


def steered(
    render: Render,
    latents: Latents,
    start: int,
    stop: int,
    steerer: ShardSteerer,
    cfg: PlanConfig,
    regressions: dict[str, Regression],
) -> Iterator[Columns]:
    """Identities [start, stop) in chunks of the steer plan's size: each chunk is steered toward the bins the
    shard lacks so far, then the estimators' labels of its canonicals (variant 0) update the counts. State is
    per shard, so a shard's bytes never depend on other shards or on the batch size."""
    for first in range(start, stop, steerer.chunk):
        chunk = np.arange(first, min(first + steerer.chunk, stop), dtype=np.int64)
        w0 = latents.ws(chunk, np.zeros_like(chunk))[:, 0]
        offsets, targets = steerer.assign(w0.float().cpu().numpy())
        per_identity = {f"steer_{a}": np.asarray(t, dtype=object).astype(str) for a, t in targets.items()}
        per_identity["steer_shift"] = np.linalg.norm(offsets, axis=1).astype(np.float32)
        if cfg.edits:
            parts = constructed(render, latents, chunk, cfg, regressions, offsets)
        else:
            parts = plain(render, chunk, cfg.variants_per_identity, offsets)
        labels: dict[str, list[np.ndarray]] = {a: [] for a in targets}
        for part in parts:
            slot = np.asarray(part["identity"]) - first
            canonical = np.asarray(part["variant"]) == 0
            for a in targets:
                labels[a].append(np.asarray(part[f"attr_{a}"])[canonical])
            yield part | {k: v[slot] for k, v in per_identity.items()}
        steerer.verify({a: np.concatenate(v) for a, v in labels.items()})
