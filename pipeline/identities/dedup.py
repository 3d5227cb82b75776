"""Dedup across identities: FAISS finds centroid pairs above a cosine threshold, connected components
join them, and one identity per component survives (best mean quality, then lowest id)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.config import DedupParams
from pipeline.identities.consistency import consistency_reasons, identity_centroids

log = logging.getLogger(__name__)

RECALL_SAMPLE = 2000


def similar_pairs(vectors: np.ndarray, threshold: float, exact_max: int = 200_000) -> np.ndarray:
    """All pairs (i < j) with inner product > threshold, as [P, 2] int64.

    Exact (flat index) up to `exact_max` vectors; above it an IVF index whose recall is
    checked against exact search on a sample and logged.
    """
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if n < 2:
        return np.zeros((0, 2), np.int64)
    if n <= exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        train = x[np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)]
        index.train(train)
        index.nprobe = max(8, nlist // 16)
    index.add(x)
    lims, _, labels = index.range_search(x, float(threshold))
    rows = np.repeat(np.arange(n), np.diff(lims).astype(np.int64))
    pairs = np.stack([rows, labels.astype(np.int64)], 1)
    pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    if n > exact_max:
        _log_recall(x, threshold, pairs)
    return pairs


def _log_recall(x: np.ndarray, threshold: float, found: np.ndarray) -> None:
    sample = np.random.default_rng(1).choice(len(x), size=min(len(x), RECALL_SAMPLE), replace=False)
    exact = x[sample] @ x.T
    truth = {
        (min(a, b), max(a, b)) for r, a in enumerate(sample) for b in np.flatnonzero(exact[r] > threshold) if a != b
    }
    got = {tuple(p) for p in found.tolist()}
    recall = len(truth & got) / len(truth) if truth else 1.0
    log.info("dedup: IVF recall %.4f on %d sampled identities (%d true pairs)", recall, len(sample), len(truth))


def representatives(n: int, pairs: np.ndarray, quality: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Boolean mask: per connected component, the member with the highest quality (ties: lowest id)."""
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.lexsort((ids, -quality, labels))  # by component, best quality first, then lowest id
    first = np.ones(n, bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    keep = np.zeros(n, bool)
    keep[order[first]] = True
    return keep


#: Candidate columns dedup reads.
DEDUP_COLUMNS = ["key", "embedding", "det_prob"]


def run_dedup(curation: pd.DataFrame, candidates: pd.DataFrame, params: DedupParams) -> pd.DataFrame:
    """Carry the filter's decisions forward and add drift / near_copy / duplicate_identity rejections."""
    df = curation.drop(columns=["reasons"], errors="ignore").merge(candidates, on="key", how="left", validate="1:1")
    kept = df.index[df["keep"].to_numpy()]
    emb = (
        np.stack(df.loc[kept, "embedding"].to_numpy()).astype(np.float32)
        if len(kept)
        else np.zeros((0, 512), np.float32)
    )
    ids = df.loc[kept, "identity"].to_numpy()
    reasons = consistency_reasons(
        emb, ids, df.loc[kept, "variant"].to_numpy(), params.min_sample_consistency, params.max_sample_similarity
    )
    df.loc[kept, "reason"] = reasons
    df.loc[kept, "keep"] = reasons == ""
    still = df["keep"].to_numpy()
    if still.any():
        emb_k = np.stack(df.loc[still, "embedding"].to_numpy()).astype(np.float32)
        uniq, centroids = identity_centroids(emb_k, df.loc[still, "identity"].to_numpy())
        quality = df.loc[still].groupby("identity")["det_prob"].mean().reindex(uniq).to_numpy()
        pairs = similar_pairs(centroids, params.max_identity_similarity, params.exact_search_max)
        survivors = set(uniq[representatives(len(uniq), pairs, quality, uniq)].tolist())
        dropped = still & ~df["identity"].isin(survivors).to_numpy()
        df.loc[dropped, "keep"] = False
        df.loc[dropped, "reason"] = "duplicate_identity"
        log.info("dedup: %d identities, %d similar pairs, %d kept", len(uniq), len(pairs), len(survivors))
    return df[["key", "identity", "variant", "keep", "reason"]]
