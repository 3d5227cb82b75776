"""Look-alike search: every pair of identity centroids whose cosine is above a threshold.

- `exact_pairs`: blocked matrix products on a device (bounded memory: one block of similarities at a time),
  in a reduced-precision kernel where that is faster, then every pair within the kernel's error bound of the
  threshold re-checked in float64. No pair is lost to rounding: a pair is kept exactly when the float64 inner
  product of its stored float16 centroids is above the threshold, whatever kernel found it.
- `ivf_pairs`: FAISS IVF (both directions of every query, so a pair is found when either side's probes reach
  the other), for CPUs where exact search would take too long.
- `search`: exact on a GPU or up to `dedup.exact_search_max` identities; above it IVF whose recall of
  above-threshold pairs is measured against exact search on a sample and must reach `dedup.min_recall`,
  raising `nprobe` round by round, else exact search. The report says which, with what, and the recall.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Bound of |kernel result - exact| for unit vectors, compared with the threshold in the kernel's dtype:
#: bf16 rounds both inputs (2 x 2^-8), the result and the threshold (2^-9 each) to 8-bit significands; fp16
#: inputs are exact (the centroids are float16), the result and the threshold round to 11 bits; fp32
#: accumulates 512 exact products. Each margin has slack on top of its bound.
MARGIN = {torch.bfloat16: 4 * 2.0**-8, torch.float16: 2.0**-9 + 1e-4, torch.float32: 1e-4}
#: Share of the kernel's measured rate the blocked search reaches (thresholding and the host copies).
EFFICIENCY = 0.6
#: True pairs the recall sample should hold (its size is set from the pairs the index found).
SAMPLE_TRUE_PAIRS = 400
MIN_SAMPLE, MAX_SAMPLE = 2_000, 50_000
#: Vectors per FAISS add/search call: bounds the float32 copies made from the float16 centroids.
CHUNK = 65_536


@dataclass
class SearchReport:
    """How the look-alike pairs were found, and how completely (recall measured, or 1.0 by construction)."""

    method: str  # "exact" or "ivf"
    device: str
    identities: int
    pairs: int
    seconds: float
    kernel: str | None = None  # exact: the matrix-product dtype
    recall: float = 1.0
    recall_interval: tuple[float, float] = (1.0, 1.0)
    sample_queries: int = 0
    sample_true_pairs: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)  # ivf: nprobe, recall, seconds per round

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def kernel(device: torch.device) -> tuple[torch.dtype, float]:
    """The matrix-product dtype for exact search and its measured rate (multiply-adds per second): float16 on
    CUDA (tensor cores; the float16 centroids are exact inputs); on a CPU bf16 where it is measured faster than
    float32 (CPUs with bf16 dot-product instructions), else float32."""
    candidates = (torch.float16,) if device.type == "cuda" else (torch.float32, torch.bfloat16)
    a = torch.randn(2048, 512, device=device)
    rates = {}
    for dtype in candidates:
        x = a.to(dtype)
        x @ x.T
        _sync(device)
        start = time.perf_counter()
        for _ in range(3):
            x @ x.T
        _sync(device)
        rates[dtype] = 3 * 2048 * 2048 * 512 / (time.perf_counter() - start)
    best = max(rates, key=rates.get)
    return best, rates[best]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def exact_seconds(n: int, d: int, rate: float) -> float:
    """Projected time of exact search: n^2 d / 2 multiply-adds at the measured rate."""
    return n * n * d / 2 / (rate * EFFICIENCY)


def _block(x: np.ndarray, lo: int, hi: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x[lo:hi], dtype=np.float16)).to(device).to(dtype)


def _blocks(x: np.ndarray, device: torch.device, dtype: torch.dtype) -> Callable[[int, int], torch.Tensor]:
    """Rows lo:hi of x on the device: on a GPU with room (a quarter of its free memory) x is uploaded once
    rather than once per block pair; elsewhere each block is converted as it is needed."""
    if device.type == "cuda" and 2 * x.size < torch.cuda.mem_get_info(device)[0] // 4:
        whole = _block(x, 0, len(x), device, dtype)
        return lambda lo, hi: whole[lo:hi]
    return lambda lo, hi: _block(x, lo, hi, device, dtype)


class _Products:
    """Block matrix products into reused output buffers (a fresh 4096 x 4096 result costs a third more time
    than the product itself on a CPU), and the entries above a threshold found through each row's maximum
    (hits are rare: one pass over the block, then only the rows that hold one)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}

    def above(self, a: torch.Tensor, b: torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        key = (len(a), len(b), a.dtype, a.device)
        out = self.buffers.setdefault(key, torch.empty(len(a), len(b), dtype=a.dtype, device=a.device))
        torch.matmul(a, b.T, out=out)
        rows = torch.nonzero(out.amax(1) > threshold).flatten()
        if not len(rows):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        r, k = torch.nonzero(out[rows] > threshold, as_tuple=True)
        return rows[r].numpy(force=True), k.numpy(force=True)


def _recheck(x: np.ndarray, y: np.ndarray, rows: np.ndarray, cols: np.ndarray, threshold: float) -> np.ndarray:
    """Which candidate pairs (rows of x, rows of y) are above the threshold in float64."""
    dots = np.einsum("ij,ij->i", np.asarray(x[rows], np.float64), np.asarray(y[cols], np.float64))
    return dots > threshold


def query_pairs(
    queries: np.ndarray, x: np.ndarray, threshold: float, device: torch.device, dtype: torch.dtype, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """(query row, x row) of every pair above the threshold between `queries` and `x`, by blocks."""
    margin, products = MARGIN[dtype], _Products()
    out_q, out_x = [], []
    for lo in range(0, len(queries), block):
        q = _block(queries, lo, lo + block, device, dtype)
        for c in range(0, len(x), block):
            r, k = products.above(q, _block(x, c, c + block, device, dtype), threshold - margin)
            ok = _recheck(queries, x, r + lo, k + c, threshold)
            out_q.append(r[ok] + lo)
            out_x.append(k[ok] + c)
    if not out_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_q).astype(np.int64), np.concatenate(out_x).astype(np.int64)


def exact_pairs(
    x: np.ndarray, threshold: float, device: torch.device, dtype: torch.dtype | None = None, block: int | None = None
) -> np.ndarray:
    """Every pair (i < j) with float64 inner product above `threshold`, as [P, 2] int64 sorted; blocks of the
    upper triangle only."""
    dtype = dtype or kernel(device)[0]
    block = block or (16_384 if device.type == "cuda" else 4_096)
    margin, products, rows = MARGIN[dtype], _Products(), _blocks(x, device, dtype)
    found = []
    with torch.no_grad():
        for lo in range(0, len(x), block):
            a = rows(lo, lo + block)
            for c in range(lo, len(x), block):
                r, k = products.above(a, a if c == lo else rows(c, c + block), threshold - margin)
                r, k = r + lo, k + c
                upper = r < k
                r, k = r[upper], k[upper]
                ok = _recheck(x, x, r, k, threshold)
                found.append(np.stack([r[ok], k[ok]], 1))
    return _sorted_pairs(found)


def _sorted_pairs(parts: list[np.ndarray]) -> np.ndarray:
    pairs = np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else pairs.reshape(0, 2)


def ivf_index(x: np.ndarray, nlist: int) -> Any:
    """A FAISS IVF index over x (inner product), trained on rows chosen by position with a fixed seed."""
    import faiss

    d = x.shape[1]
    train = np.sort(np.random.default_rng(0).choice(len(x), size=min(len(x), 64 * nlist), replace=False))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = 64
    index.train(np.ascontiguousarray(x[train], dtype=np.float32))
    for lo in range(0, len(x), CHUNK):
        index.add(np.ascontiguousarray(x[lo : lo + CHUNK], dtype=np.float32))
    return index


def ivf_pairs(x: np.ndarray, threshold: float, index: Any, nprobe: int) -> np.ndarray:
    """Pairs (i < j) the IVF index finds above the threshold from either side, re-checked in float64."""
    index.nprobe = min(nprobe, index.nlist)
    found = []
    for lo in range(0, len(x), CHUNK):
        queries = np.ascontiguousarray(x[lo : lo + CHUNK], dtype=np.float32)
        lims, _, labels = index.range_search(queries, float(threshold))
        rows = lo + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))
        cols = labels.astype(np.int64)
        pairs = np.stack([np.minimum(rows, cols), np.maximum(rows, cols)], 1)
        pairs = pairs[pairs[:, 0] < pairs[:, 1]]
        found.append(pairs[_recheck(x, x, pairs[:, 0], pairs[:, 1], threshold)])
    pairs = _sorted_pairs(found)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def wilson(hits: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if total == 0:
        return 0.0, 1.0
    p = hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def sample_size(n: int, found: int) -> int:
    """Queries whose true pairs number about SAMPLE_TRUE_PAIRS: each pair has two ends, so a query holds
    2P/n of the P pairs on average, and P >= found (the index can only miss pairs)."""
    if found == 0:
        return min(n, MAX_SAMPLE)
    return int(min(n, max(MIN_SAMPLE, min(MAX_SAMPLE, math.ceil(SAMPLE_TRUE_PAIRS * n / (2 * found))))))


@dataclass
class RecallSample:
    """Exact truth for a seeded sample of queries: the true pairs with at least one end in the sample."""

    queries: np.ndarray
    truth: set[tuple[int, int]]

    @classmethod
    def of(cls, x: np.ndarray, threshold: float, size: int, device: torch.device, dtype: torch.dtype) -> RecallSample:
        queries = np.sort(np.random.default_rng(1).choice(len(x), size=min(size, len(x)), replace=False))
        q, k = query_pairs(x[queries], x, threshold, device, dtype, 4_096)
        a, b = queries[q], k
        keep = a != b
        truth = set(zip(np.minimum(a, b)[keep].tolist(), np.maximum(a, b)[keep].tolist(), strict=True))
        return cls(queries, truth)

    def recall(self, pairs: np.ndarray) -> tuple[float, tuple[float, float]]:
        sampled = np.zeros(int(pairs.max()) + 1 if len(pairs) else 0, bool)
        inside = self.queries[self.queries < len(sampled)]
        sampled[inside] = True
        touching = pairs[sampled[pairs[:, 0]] | sampled[pairs[:, 1]]] if len(pairs) else pairs
        hits = len(self.truth & set(map(tuple, touching.tolist())))
        total = len(self.truth)
        return (hits / total if total else 1.0), wilson(hits, total)


def search(
    x: np.ndarray,
    threshold: float,
    device: torch.device,
    exact_max: int,
    min_recall: float,
    nlist: int | None = None,
    nprobe: int = 8,
) -> tuple[np.ndarray, SearchReport]:
    """The look-alike pairs (i < j) of x and how they were found (see the module docstring). IVF rounds double
    `nprobe` until the measured recall meets `min_recall`; when the next round is projected to take longer than
    exact search (at the kernel's measured rate), or would probe half the lists, exact search runs instead."""
    n = len(x)
    start = time.perf_counter()
    if n < 2:
        return np.zeros((0, 2), np.int64), SearchReport("exact", str(device), n, 0, 0.0)
    dtype, rate = kernel(device)
    if device.type == "cuda" or n <= exact_max:
        pairs = exact_pairs(x, threshold, device, dtype)
        return pairs, SearchReport("exact", str(device), n, len(pairs), time.perf_counter() - start, str(dtype))
    index = ivf_index(x, min(n, nlist or max(1, int(4 * math.sqrt(n)))))  # FAISS needs a point per list
    exact_cost = exact_seconds(n, x.shape[1], rate)
    sample: RecallSample | None = None
    rounds: list[dict[str, Any]] = []
    while True:
        t0 = time.perf_counter()
        pairs = ivf_pairs(x, threshold, index, nprobe)
        seconds = time.perf_counter() - t0
        if sample is None:
            sample = RecallSample.of(x, threshold, sample_size(n, len(pairs)), device, dtype)
        recall, interval = sample.recall(pairs)
        probes = min(nprobe, index.nlist)
        rounds.append({"nprobe": probes, "recall": round(recall, 5), "seconds": round(seconds, 1)})
        log.info("dedup: IVF nprobe %d recall %.4f [%.4f, %.4f] on %d sampled identities (%d true pairs), %.0f s",
                 probes, recall, *interval, len(sample.queries), len(sample.truth), seconds)  # fmt: skip
        if recall >= min_recall or nprobe >= index.nlist:
            report = SearchReport("ivf", str(device), n, len(pairs), time.perf_counter() - start, None, recall,
                                  interval, len(sample.queries), len(sample.truth), rounds)  # fmt: skip
            return pairs, report
        nprobe *= 2
        if nprobe >= index.nlist // 2 or 2 * seconds > exact_cost:
            log.info("dedup: IVF recall %.4f < dedup.min_recall %.2f; exact search instead (projected %.0f s)",
                     recall, min_recall, exact_cost)  # fmt: skip
            pairs = exact_pairs(x, threshold, device, dtype)
            report = SearchReport("exact", str(device), n, len(pairs), time.perf_counter() - start, str(dtype),
                                  rounds=rounds)  # fmt: skip
            return pairs, report
