"""Within-identity checks: samples must look like their identity (`drift`) without being copies (`near_copy`)."""

from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def consistency_reasons(
    embeddings: np.ndarray,
    identities: np.ndarray,
    variants: np.ndarray,
    min_consistency: float,
    max_similarity: float,
) -> np.ndarray:
    """Reason per sample ('' kept, 'drift', 'near_copy') among the samples given (the kept ones).

    drift: cosine to the identity's centroid < min_consistency. near_copy: cosine to an earlier
    (lower variant) kept sample of the same identity > max_similarity. Order-independent.
    """
    emb = normalise(embeddings)
    reasons = np.full(len(emb), "", dtype=object)
    order = np.lexsort((variants, identities))
    sorted_ids = identities[order]
    bounds = np.flatnonzero(np.diff(sorted_ids)) + 1
    for group in np.split(order, bounds):
        if len(group) == 0:
            continue
        e = emb[group]
        centroid = normalise(e.mean(0))
        drift = e @ centroid < min_consistency
        reasons[group[drift]] = "drift"
        kept: list[int] = []
        for local in np.flatnonzero(~drift):
            if kept and float((e[kept] @ e[local]).max()) > max_similarity:
                reasons[group[local]] = "near_copy"
            else:
                kept.append(local)
    return reasons


def identity_centroids(embeddings: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique identity ids (sorted) and their unit-norm mean embeddings."""
    ids, inverse = np.unique(identities, return_inverse=True)
    sums = np.zeros((len(ids), embeddings.shape[1]), np.float64)
    np.add.at(sums, inverse, normalise(embeddings))
    return ids, normalise(sums)
