"""Dedup: within-identity consistency shard by shard, then look-alike identities across the whole set.

Only identity centroids (float16) and a mean quality per identity stay in memory. The look-alike search
(curation/search.py: exact on a device, or approximate to a measured recall) finds centroid pairs above
`dedup.max_identity_similarity`; a maximal independent set of that look-alike graph survives, so no kept
pair is above the threshold, every dropped identity has a kept look-alike, and a chain A~B~C keeps both A
and C (one per connected component would keep one). The search's report travels in the table's metadata.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from scipy.sparse import csr_array

from pipeline.config import DedupParams
from pipeline.curation.consistency import consistency_reasons, identity_centroids, normalise
from pipeline.curation.search import SearchReport, search
from pipeline.curation.table import CurationWriter, along_candidates, keep_mask, read_curation
from pipeline.errors import InputError, PipelineError
from pipeline.shards.candidates import MANIFEST, embedding_matrix

log = logging.getLogger(__name__)
CPU = torch.device("cpu")

#: Vectors per FAISS search call in the reference check.
CHUNK = 65_536
#: Candidate columns dedup reads.
DEDUP_COLUMNS = ["key", "identity", "variant", "embedding", "det_prob"]
#: Reason codes dedup adds, in the order they are decided.
CODES = ("", "drift", "near_copy", "duplicate_identity", "matches_reference")


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
    centroids: np.ndarray, ids: np.ndarray, quality: np.ndarray, params: DedupParams, device: torch.device = CPU
) -> tuple[np.ndarray, np.ndarray, SearchReport]:
    """Kept mask over the given identities, their look-alike pairs (as row positions, i < j) and how the pairs
    were found, in any row order: rows are sorted by identity id first, so the result depends on ids only."""
    order = np.argsort(ids, kind="stable")
    in_order = bool((np.diff(ids) > 0).all())  # the stage's case: shards come in identity order, no copy
    pairs, report = search(
        centroids if in_order else centroids[order], params.max_identity_similarity, device,
        params.exact_search_max, params.min_recall, params.ivf_nlist, params.ivf_nprobe,
    )  # fmt: skip
    keep_sorted = independent_set(pairs, quality[order], ids[order])
    keep = np.empty(len(ids), bool)
    keep[order] = keep_sorted
    return keep, np.sort(order[pairs], axis=1) if len(pairs) else pairs, report


#: Reference embeddings held at once (2 GiB in float32): a set of real people, not a dataset.
MAX_REFERENCE_ROWS = 1_000_000


def load_reference(path: str | Path) -> np.ndarray:
    """Unit-norm embeddings of real people from a Parquet file with an `embedding` column of 512 floats per row.
    Every row must be finite and non-zero: a NaN row matches nobody, so one would switch the check off."""
    where = f"dedup.reference: {path}"
    try:
        meta = pq.read_metadata(path)
        if meta.num_rows > MAX_REFERENCE_ROWS:
            raise InputError(f"{where}: {meta.num_rows:,} rows, more than {MAX_REFERENCE_ROWS:,} reference people")
        table = pq.read_table(path, columns=["embedding"])
    except FileNotFoundError:
        raise InputError(f"{where} not found") from None
    except IsADirectoryError:
        raise InputError(f"{where} is a folder, not a Parquet file") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, OSError) as err:
        raise InputError(f"{where} is not a Parquet file with an `embedding` column ({str(err)[:120]})") from None
    emb = _embedding_rows(table.column("embedding"), where)
    if not len(emb):
        raise InputError(f"{where} has no rows: give at least one embedding, or set dedup.reference: null")
    bad = ~np.isfinite(emb).all(1) | (np.linalg.norm(emb, axis=1) == 0)
    if bad.any():
        raise InputError(
            f"{where}: {int(bad.sum())} rows are not finite or are zero (first: row {int(np.argmax(bad))})"
        )
    return normalise(emb)


def _embedding_rows(column: pa.ChunkedArray, where: str) -> np.ndarray:
    """[rows, 512] float32 from a list column of numbers (fixed-size or not), or InputError saying what it is."""
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise InputError(f"{where}: `embedding` must be lists of 512 numbers, got {kind}")
    if not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise InputError(f"{where}: `embedding` must hold numbers, got {kind.value_type}")
    if pa.types.is_fixed_size_list(kind):
        sizes = np.full(len(column), kind.list_size)
    else:
        sizes = np.asarray(pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False))
    if column.null_count or (sizes != 512).any():
        row = int(np.argmax(sizes != 512)) if (sizes != 512).any() else 0
        raise InputError(f"{where}: every row needs 512 numbers; row {row} has {int(sizes[row])}")
    values = pa.concat_arrays([c.flatten() for c in column.chunks]) if column.num_chunks else pa.array([], pa.float32())
    return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 512)


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
    device: torch.device = CPU
    codes: list[np.ndarray] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)
    capacity: int = 0
    buffer: np.ndarray | None = None
    filled: int = 0
    quality: list[np.ndarray] = field(default_factory=list)
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    decided: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    search: SearchReport | None = None

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
        reference = load_reference(self.params.reference) if self.params.reference else None  # before the search
        keep, self.pairs, self.search = dedup_identities(centroids, ids, quality, self.params, self.device)
        real = np.zeros(len(ids), bool)
        if reference is not None and len(ids):
            real = keep & reference_matches(centroids, reference, self.params.max_reference_similarity)
        log.info("dedup: %d identities, %d look-alike pairs (%s search, recall %.4f): %d dropped as look-alikes, "
                 "%d as closer than %.2f to a reference person, %d kept", len(ids), len(self.pairs),
                 self.search.method, self.search.recall, int((~keep).sum()), int(real.sum()),
                 self.params.max_reference_similarity, int((keep & ~real).sum()))  # fmt: skip
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
    candidates: str | Path, filter_path: str | Path, params: DedupParams, out: str | Path, device: torch.device = CPU
) -> tuple[CurationWriter, Dedup]:
    """The dedup stage: two passes over the shards (consistency + centroids, then the decisions); the look-alike
    search runs on `device`, and its report goes into the table's metadata (`curation_notes`: `search`)."""
    curation = read_curation(filter_path, ["key", "identity", "variant", "keep", "reason"])
    manifest = json.loads((Path(candidates) / MANIFEST).read_text())
    state = Dedup(params, device, capacity=sum(b - a for a, b in (s["identities"] for s in manifest["shards"])))
    for shard, rows in along_candidates(curation, candidates, DEDUP_COLUMNS):
        state.add_shard(
            keep_mask(rows), shard.column("identity").to_numpy(), shard.column("variant").to_numpy(),
            embedding_matrix(shard.column("embedding")), shard.column("det_prob").to_numpy(zero_copy_only=False),
        )  # fmt: skip
    state.finish()
    offset = 0
    with CurationWriter(out, notes={"search": state.search.to_json()}) as writer:
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
