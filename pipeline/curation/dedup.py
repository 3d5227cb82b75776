"""Dedup: within-identity consistency shard by shard, then look-alike identities across the whole set.

Only identity centroids (float16) and a mean quality per identity stay in memory. FAISS finds centroid
pairs above `dedup.max_identity_similarity`; a maximal independent set of that look-alike graph
survives, so no kept pair is above the threshold, every dropped identity has a kept look-alike, and a
chain A~B~C keeps both A and C (one per connected component would keep one).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.sparse import csr_array

from pipeline.config import DedupParams
from pipeline.curation.consistency import consistency_reasons, identity_centroids, normalise
from pipeline.curation.table import CurationWriter, along_candidates, keep_mask, read_curation
from pipeline.errors import PipelineError
from pipeline.shards.candidates import MANIFEST, embedding_matrix

log = logging.getLogger(__name__)

RECALL_SAMPLE = 2000
#: Vectors per FAISS add/search call: bounds the float32 copies made from the float16 centroids.
CHUNK = 65_536
#: Candidate columns dedup reads.
DEDUP_COLUMNS = ["key", "identity", "variant", "embedding", "det_prob"]
#: Reason codes dedup adds, in the order they are decided.
CODES = ("", "drift", "near_copy", "duplicate_identity", "matches_reference")


def _ivf_index(d: int, nlist: int, nprobe: int, train: np.ndarray):
    import faiss

    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = 64
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    index.nprobe = min(nprobe, nlist)
    return index


def similar_pairs(
    vectors: np.ndarray, threshold: float, exact_max: int = 50_000, nlist: int | None = None, nprobe: int = 8
) -> np.ndarray:
    """All pairs (i < j) of rows with inner product > threshold, as [P, 2] int64.

    Exact (flat index) up to `exact_max` vectors (O(n^2): 100k take about a minute on 2 cores); above
    it an IVF index with `nlist` lists (default 4 sqrt(n)) probing `nprobe`, trained on rows chosen by
    position with a fixed seed (callers pass rows sorted by identity id, so by id), whose recall is
    measured against exact search on a sample and logged. Rows go to FAISS in float32 chunks, so
    float16 input is never copied whole."""
    n = len(vectors)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    import faiss

    d = vectors.shape[1]
    if n <= exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = nlist or max(1, int(4 * np.sqrt(n)))
        train_rows = np.sort(np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False))
        index = _ivf_index(d, nlist, nprobe, vectors[train_rows])
    for lo in range(0, n, CHUNK):
        index.add(np.ascontiguousarray(vectors[lo : lo + CHUNK], dtype=np.float32))
    found = []
    for lo in range(0, n, CHUNK):
        lims, _, labels = index.range_search(np.ascontiguousarray(vectors[lo : lo + CHUNK], dtype=np.float32),
                                             float(threshold))  # fmt: skip
        rows = lo + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))
        pairs = np.stack([rows, labels.astype(np.int64)], 1)
        found.append(pairs[pairs[:, 0] < pairs[:, 1]])
    pairs = np.concatenate(found)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    if n > exact_max:
        _log_recall(vectors, threshold, pairs)
    return pairs


def _log_recall(x: np.ndarray, threshold: float, found: np.ndarray, chunk: int = 16_384) -> float:
    """Share of the true pairs of a sample of queries (exact search, in chunks) that the index found."""
    sample = np.random.default_rng(1).choice(len(x), size=min(len(x), RECALL_SAMPLE), replace=False)
    queries = np.asarray(x[sample], dtype=np.float32)
    truth: set[tuple[int, int]] = set()
    for lo in range(0, len(x), chunk):
        rows, cols = np.nonzero(queries @ np.asarray(x[lo : lo + chunk], dtype=np.float32).T > threshold)
        for a, b in zip(sample[rows].tolist(), (cols + lo).tolist(), strict=True):
            if a != b:
                truth.add((min(a, b), max(a, b)))
    sampled = set(sample.tolist())
    got = {p for p in map(tuple, found.tolist()) if p[0] in sampled or p[1] in sampled}
    recall = len(truth & got) / len(truth) if truth else 1.0
    log.info("dedup: IVF recall %.4f on %d sampled identities (%d true pairs)", recall, len(sample), len(truth))
    return recall


def independent_set(pairs: np.ndarray, quality: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Boolean mask of a maximal independent set of the look-alike graph, greedy in a fixed order:
    fewest look-alikes first, then best quality, then lowest id; each kept node drops its neighbours.

    The order depends only on (degree, quality, id), so the result does not depend on the row order."""
    n = len(ids)
    keep = np.ones(n, bool)
    if not len(pairs):
        return keep
    both = np.concatenate([pairs, pairs[:, ::-1]])
    graph = csr_array((np.ones(len(both), np.int8), (both[:, 0], both[:, 1])), shape=(n, n))
    indptr, neighbours = graph.indptr, graph.indices
    degree = np.diff(indptr)
    order = np.lexsort((ids, -np.nan_to_num(quality, nan=-np.inf), degree))
    dropped = np.zeros(n, bool)
    for node in order[degree[order] > 0].tolist():
        if not dropped[node]:
            dropped[neighbours[indptr[node] : indptr[node + 1]]] = True
    keep[dropped] = False
    return keep


def dedup_identities(
    centroids: np.ndarray, ids: np.ndarray, quality: np.ndarray, params: DedupParams
) -> tuple[np.ndarray, np.ndarray]:
    """Kept mask over the given identities and their look-alike pairs (as row positions, i < j), in any
    row order: rows are sorted by identity id first, so the index and the result depend on ids only."""
    order = np.argsort(ids, kind="stable")
    in_order = bool((np.diff(ids) > 0).all())  # the stage's case: shards come in identity order, no copy
    pairs = similar_pairs(
        centroids if in_order else centroids[order], params.max_identity_similarity, params.exact_search_max,
        params.ivf_nlist, params.ivf_nprobe,
    )  # fmt: skip
    keep_sorted = independent_set(pairs, quality[order], ids[order])
    keep = np.empty(len(ids), bool)
    keep[order] = keep_sorted
    return keep, np.sort(order[pairs], axis=1) if len(pairs) else pairs


def load_reference(path: str | Path) -> np.ndarray:
    """Unit-norm embeddings of real people from a Parquet file with an `embedding` column."""
    try:
        table = pq.read_table(path, columns=["embedding"])
    except FileNotFoundError:
        raise PipelineError(f"dedup.reference: {path} not found") from None
    except (pa.ArrowInvalid, KeyError) as err:
        raise PipelineError(f"dedup.reference: {path} needs an `embedding` column of 512 floats ({err})") from None
    column = table.column("embedding")
    if pa.types.is_fixed_size_list(column.type):
        emb = embedding_matrix(column).astype(np.float32)
    else:
        emb = np.stack(column.to_numpy(zero_copy_only=False)).astype(np.float32)
    if emb.ndim != 2 or emb.shape[1] != 512:
        raise PipelineError(f"dedup.reference: embeddings must be 512-d, got shape {emb.shape}")
    return normalise(emb)


def reference_matches(centroids: np.ndarray, reference: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean per centroid: cosine to its nearest reference embedding above `threshold`."""
    import faiss

    index = faiss.IndexFlatIP(reference.shape[1])
    index.add(np.ascontiguousarray(reference))
    best = [index.search(np.ascontiguousarray(centroids[lo : lo + CHUNK], dtype=np.float32), 1)[0][:, 0]
            for lo in range(0, len(centroids), CHUNK)]  # fmt: skip
    return np.concatenate(best) > threshold if best else np.zeros(0, bool)


@dataclass
class Dedup:
    """Dedup state over a stream of shards: per-row reason codes, per-identity centroid and quality."""

    params: DedupParams
    codes: list[np.ndarray] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)
    capacity: int = 0
    buffer: np.ndarray | None = None
    filled: int = 0
    quality: list[np.ndarray] = field(default_factory=list)
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    decided: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add_shard(
        self, keep: np.ndarray, identity: np.ndarray, variant: np.ndarray, embedding: np.ndarray, det_prob: np.ndarray
    ) -> None:
        """Consistency among the shard's kept rows; centroid and mean det_prob of each identity still kept."""
        codes = np.zeros(len(keep), np.int8)
        kept = np.flatnonzero(keep)
        emb = np.asarray(embedding[kept], dtype=np.float32)
        reasons = consistency_reasons(
            emb, identity[kept], variant[kept], self.params.min_sample_consistency, self.params.max_sample_similarity
        )
        codes[kept] = pd.Categorical(reasons, categories=CODES).codes
        self.codes.append(codes)
        still = reasons == ""
        if still.any():
            uniq, centroids = identity_centroids(emb[still], identity[kept][still])
            quality = pd.Series(det_prob[kept][still]).groupby(identity[kept][still]).mean().reindex(uniq)
            self.ids.append(uniq)
            self._store(centroids)
            self.quality.append(quality.to_numpy(np.float64))

    def _store(self, centroids: np.ndarray) -> None:
        """Into one float16 buffer sized for every identity, grown only if `capacity` was too small."""
        need = self.filled + len(centroids)
        if self.buffer is None or need > len(self.buffer):
            grown = np.empty((max(need, self.capacity, 2 * (0 if self.buffer is None else len(self.buffer))),
                              centroids.shape[1]), np.float16)  # fmt: skip
            if self.buffer is not None:
                grown[: self.filled] = self.buffer[: self.filled]
            self.buffer = grown
        self.buffer[self.filled : need] = centroids
        self.filled = need

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Identity-level decisions: (identity ids, dropped as duplicate, dropped as a reference match)."""
        ids = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int64)
        if (np.diff(ids) <= 0).any():
            raise PipelineError("dedup: an identity spans two candidate shards (the shards are not by identity)")
        centroids = self.buffer[: self.filled] if self.buffer is not None else np.zeros((0, 512), np.float16)
        quality = np.concatenate(self.quality) if self.quality else np.zeros(0)
        keep, self.pairs = dedup_identities(centroids, ids, quality, self.params)
        log.info("dedup: %d identities, %d look-alike pairs, %d kept", len(ids), len(self.pairs), int(keep.sum()))
        real = np.zeros(len(ids), bool)
        if self.params.reference and len(ids):
            real = keep & reference_matches(
                centroids, load_reference(self.params.reference), self.params.max_reference_similarity
            )
            log.info("dedup: %d identities closer than %.2f to a reference person", int(real.sum()),
                     self.params.max_reference_similarity)  # fmt: skip
        self.decided = (ids, ~keep, real)
        return self.decided

    def row_codes(self, shard: int, identity: np.ndarray) -> np.ndarray:
        """Final reason code of each row of shard `shard` (0 = kept by dedup; filter rejections stay 0),
        after `finish`."""
        assert self.decided is not None, "row_codes needs finish() first"
        ids, duplicate, real = self.decided
        codes = self.codes[shard].copy()
        if not len(ids):
            return codes
        pos = np.clip(np.searchsorted(ids, identity), 0, len(ids) - 1)
        known = (codes == 0) & (ids[pos] == identity)
        codes[known & duplicate[pos]] = CODES.index("duplicate_identity")
        codes[known & real[pos]] = CODES.index("matches_reference")
        return codes


def _decided_rows(rows: pa.Table, codes: np.ndarray) -> pa.Table:
    """The previous table's rows with dedup's rejections applied (earlier rejections keep their reason)."""
    was_kept = keep_mask(rows)
    new = was_kept & (codes > 0)
    reason = np.where(new, np.asarray(CODES, dtype=object)[codes], rows.column("reason").to_numpy(zero_copy_only=False))
    return pa.table({
        "key": rows.column("key"), "identity": rows.column("identity"), "variant": rows.column("variant"),
        "keep": pa.array(was_kept & ~new), "reason": pa.array(reason, pa.string()),
    })  # fmt: skip


def run_dedup(
    candidates: str | Path, filter_path: str | Path, params: DedupParams, out: str | Path
) -> tuple[CurationWriter, Dedup]:
    """The dedup stage: two passes over the shards (consistency + centroids, then the decisions)."""
    curation = read_curation(filter_path, ["key", "identity", "variant", "keep", "reason"])
    manifest = json.loads((Path(candidates) / MANIFEST).read_text())
    state = Dedup(params, capacity=sum(b - a for a, b in (s["identities"] for s in manifest["shards"])))
    for shard, rows in along_candidates(curation, candidates, DEDUP_COLUMNS):
        state.add_shard(
            keep_mask(rows), shard.column("identity").to_numpy(), shard.column("variant").to_numpy(),
            embedding_matrix(shard.column("embedding")), shard.column("det_prob").to_numpy(zero_copy_only=False),
        )  # fmt: skip
    state.finish()
    offset = 0
    with CurationWriter(out) as writer:
        for i, codes in enumerate(state.codes):
            rows = curation.slice(offset, len(codes))
            offset += len(codes)
            writer.write(_decided_rows(rows, state.row_codes(i, rows.column("identity").to_numpy())))
    return writer, state


def dedup_frame(curation: pd.DataFrame, candidates: pd.DataFrame, params: DedupParams) -> pd.DataFrame:
    """Dedup of in-memory tables (one 'shard'): the same decisions as the stage, for tests and benchmarks."""
    df = curation[["key", "identity", "variant", "keep", "reason"]].merge(
        candidates.drop(columns=["identity", "variant"], errors="ignore"), on="key", how="left", validate="1:1"
    )
    df = df.sort_values("key", kind="stable").reset_index(drop=True)
    state = Dedup(params)
    emb = np.stack(df["embedding"].to_numpy()) if len(df) else np.zeros((0, 512), np.float32)
    state.add_shard(df["keep"].to_numpy(bool), df["identity"].to_numpy(), df["variant"].to_numpy(), emb,
                    df["det_prob"].to_numpy(np.float64))  # fmt: skip
    state.finish()
    codes = state.row_codes(0, df["identity"].to_numpy())
    table = _decided_rows(pa.Table.from_pandas(df[["key", "identity", "variant", "keep", "reason"]],
                                               preserve_index=False), codes)  # fmt: skip
    return table.to_pandas()
