"""Separation by construction: in each shard, identity slots are filled in order and slot k keeps the first of
its latent tries whose canonical face is no look-alike of the canonicals kept for slots before it (cosine of
the curation embeddings <= `identities.separation`), as the Idiap face_synthetics generator rejects new
identities by angle. After `identities.separation_tries` failures the slot keeps its least similar try and is
marked not separated; dedup still judges it, and every look-alike across shards.

The answer is the sequential one, but tries are rendered in batches: a try that fails against the kept
canonicals already known fails against the final ones too (that set only grows), so every slot whose tries
all fail gets its next try in the same batch. Only tries the sequential order would render are rendered, and
the result depends on (seed, shard) alone: not on the batch size, not on other shards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Separation:
    """Per slot: the chosen try, whether it is separated from every earlier slot, its largest cosine to them
    (-inf for the first slot), and the row of the chosen render in the order renders were requested."""

    tries: np.ndarray  # [n] int
    separated: np.ndarray  # [n] bool
    max_cosine: np.ndarray  # [n] float32
    rows: np.ndarray  # [n] int: index into the concatenated renders
    renders: int  # tries rendered in all


def _unit(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, np.float32)
    norm = np.linalg.norm(e, axis=-1, keepdims=True)
    return e / np.maximum(norm, 1e-12)


def separate(
    slots: int, tries: int, threshold: float, render: Callable[[list[tuple[int, int]]], np.ndarray]
) -> Separation:
    """Choose a try for each of `slots` slots; `render([(slot, try), ...])` returns their embeddings [n, d]."""
    rendered: list[list[np.ndarray]] = [[] for _ in range(slots)]
    render_row: list[list[int]] = [[] for _ in range(slots)]
    rows_done = 0
    chosen = np.zeros(slots, np.int64)
    separated = np.zeros(slots, bool)
    max_cos = np.full(slots, -np.inf, np.float32)
    kept: list[np.ndarray] = []

    def request(pairs: list[tuple[int, int]]) -> None:
        nonlocal rows_done
        embeddings = _unit(render(pairs))
        for (slot, _), e in zip(pairs, embeddings, strict=True):
            rendered[slot].append(e)
            render_row[slot].append(rows_done)
            rows_done += 1

    def worst(slot: int, known: int) -> np.ndarray:
        """Largest cosine of each rendered try of `slot` to the first `known` kept canonicals."""
        if known == 0:
            return np.full(len(rendered[slot]), -np.inf, np.float32)
        return (np.stack(rendered[slot]) @ np.stack(kept[:known]).T).max(1)

    request([(k, 0) for k in range(slots)])
    decided = 0
    while decided < slots:
        while decided < slots:  # decide the prefix in order while its tries allow
            k = decided
            cos = worst(k, k)
            passing = np.flatnonzero(cos <= threshold)
            if not len(passing) and len(rendered[k]) < tries:
                break
            t = int(passing[0]) if len(passing) else int(np.argmin(cos))
            chosen[k], separated[k], max_cos[k] = t, bool(len(passing)), cos[t]
            kept.append(rendered[k][t])
            decided += 1
        if decided == slots:
            break
        need = [
            (k, len(rendered[k]))
            for k in range(decided, slots)
            if len(rendered[k]) < tries and (worst(k, decided) > threshold).all()
        ]
        request(need)  # holds slot `decided`, which is stuck, so every round progresses
    rows = np.array([render_row[k][int(chosen[k])] for k in range(slots)], np.int64)
    return Separation(chosen, separated, max_cos, rows, rows_done)
