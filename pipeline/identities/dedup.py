"""Dedup across identities: FAISS finds centroid pairs above a cosine threshold, connected components
join them, and one identity per component survives (best mean quality, then lowest id)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.config import DedupParams
from pipeline.errors import PipelineError
from pipeline.identities.consistency import consistency_reasons, identity_centroids, normalise

log = logging.getLogger(__name__)

RECALL_SAMPLE = 2000


def similar_pairs(
    vectors: np.ndarray, threshold: float, exact_max: int = 50_000, nlist: int | None = None, nprobe: int = 8
) -> np.ndarray:
    """All pairs (i < j) with inner product > threshold, as [P, 2] int64.

    Exact (flat index) up to `exact_max` vectors (O(n^2): 100k take about a minute on 2 cores);
    above it an IVF index with `nlist` lists (default 4 sqrt(n)) probing `nprobe` of them, whose recall
    is measured against exact search on a sample and logged (1M identities: about 3 minutes on 2 cores).
    """
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if n < 2:
        return np.zeros((0, 2), np.int64)
    if n <= exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = nlist or max(1, int(4 * np.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = 64
        train = x[np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)]
        index.train(train)
        index.nprobe = min(nprobe, nlist)
    index.add(x)
    lims, _, labels = index.range_search(x, float(threshold))
    rows = np.repeat(np.arange(n), np.diff(lims).astype(np.int64))
    pairs = np.stack([rows, labels.astype(np.int64)], 1)
    pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    if n > exact_max:
        _log_recall(x, threshold, pairs)
    return pairs


def _log_recall(x: np.ndarray, threshold: float, found: np.ndarray, chunk: int = 100_000) -> float:
    """Share of the true pairs of a sample of queries (exact search, in chunks) that the index found."""
    sample = np.random.default_rng(1).choice(len(x), size=min(len(x), RECALL_SAMPLE), replace=False)
    truth: set[tuple[int, int]] = set()
    for lo in range(0, len(x), chunk):
        rows, cols = np.nonzero(x[sample] @ x[lo : lo + chunk].T > threshold)
        for a, b in zip(sample[rows].tolist(), (cols + lo).tolist(), strict=True):
            if a != b:
                truth.add((min(a, b), max(a, b)))
    sampled = set(sample.tolist())
    got = {p for p in map(tuple, found.tolist()) if p[0] in sampled or p[1] in sampled}
    recall = len(truth & got) / len(truth) if truth else 1.0
    log.info("dedup: IVF recall %.4f on %d sampled identities (%d true pairs)", recall, len(sample), len(truth))
    return recall


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


def load_reference(path: str | Path) -> np.ndarray:
    """Unit-norm embeddings of real people from a Parquet file with an `embedding` column."""
    try:
        table = pq.read_table(path, columns=["embedding"])
    except FileNotFoundError:
        raise PipelineError(f"dedup.reference: {path} not found") from None
    except (pa.ArrowInvalid, KeyError) as err:
        raise PipelineError(f"dedup.reference: {path} needs an `embedding` column of 512 floats ({err})") from None
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    if emb.ndim != 2 or emb.shape[1] != 512:
        raise PipelineError(f"dedup.reference: embeddings must be 512-d, got shape {emb.shape}")
    return normalise(emb)


def reference_matches(centroids: np.ndarray, reference: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean per centroid: cosine to its nearest reference embedding above `threshold`."""
    import faiss

    index = faiss.IndexFlatIP(reference.shape[1])
    index.add(np.ascontiguousarray(reference))
    best, _ = index.search(np.ascontiguousarray(centroids, dtype=np.float32), 1)
    return best[:, 0] > threshold


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
        pairs = similar_pairs(
            centroids, params.max_identity_similarity, params.exact_search_max, params.ivf_nlist, params.ivf_nprobe
        )
        survivors = set(uniq[representatives(len(uniq), pairs, quality, uniq)].tolist())
        dropped = still & ~df["identity"].isin(survivors).to_numpy()
        df.loc[dropped, "keep"] = False
        df.loc[dropped, "reason"] = "duplicate_identity"
        log.info("dedup: %d identities, %d similar pairs, %d kept", len(uniq), len(pairs), len(survivors))
        if params.reference:
            real = reference_matches(centroids, load_reference(params.reference), params.max_reference_similarity)
            leaked = df["keep"].to_numpy() & df["identity"].isin(set(uniq[real].tolist())).to_numpy()
            df.loc[leaked, "keep"] = False
            df.loc[leaked, "reason"] = "matches_reference"
            log.info(
                "dedup: %d identities closer than %.2f to a reference person",
                int(real.sum()),
                params.max_reference_similarity,
            )
    return df[["key", "identity", "variant", "keep", "reason"]]
