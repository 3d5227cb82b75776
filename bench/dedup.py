"""Benchmark: recall and time of the look-alike search on N identity centroids with planted look-alike pairs.

The centroids are float16 unit vectors, as dedup stores them: isotropic (random directions) or clustered (a
mixture of 32 groups whose members have cosine ~0.2 to each other, as real face embeddings cluster by gender,
age and ethnicity). 1% of N pairs are planted at cosines spread uniformly over [threshold + 0.02, 0.9]. Each
method runs in its own process, so its peak RSS is its own; recall is of the planted pairs, overall and per
cosine band, the first band being the one nearest the threshold.

Methods: `legacy` (the previous default: an IVF with 4 sqrt(N) lists probing 8, each query keeping only pairs
to later rows), `stage` (what the dedup stage now does with default params), `exact-bf16` / `exact-fp32`
(blocked exact search with that kernel), `ivf-target` (IVF rounds to min_recall 0.99, exact if they cannot).

    uv run python bench/dedup.py --n 200000 --methods legacy,stage,exact-fp32,ivf-target
    uv run python bench/dedup.py --n 1000000 --methods legacy,stage --data clustered
    uv run python bench/dedup.py --graphs        # kept share: independent set vs. one per component
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, not bench/, first on the path: bench/pipeline.py would shadow the `pipeline` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import itertools
import json
import resource
import subprocess
import time

import numpy as np
import torch

from pipeline.config import DedupParams
from pipeline.curation.dedup import independent_set
from pipeline.curation.search import exact_pairs, search

#: Lower edges of the recall bands (the last runs to 0.9).
BANDS = (0.52, 0.6, 0.7)


def centroids(n: int, threshold: float, data: str, seed: int = 0, dim: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """n float16 unit vectors, made in chunks (the float16 array is the only copy held), and the planted pairs
    [n // 100, 2] with their cosines in column 3."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((32, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float16)
    for lo in range(0, n, 65_536):
        chunk = rng.standard_normal((min(65_536, n - lo), dim), dtype=np.float32)
        if data == "clustered":  # members of a group have cosine ~0.2 to each other
            chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
            chunk += 0.5 * centres[rng.integers(0, 32, len(chunk))]
        x[lo : lo + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    rows = rng.permutation(n)[: 2 * (n // 100)].reshape(-1, 2)
    cosines = rng.uniform(threshold + 0.02, 0.9, len(rows))
    a = x[rows[:, 0]].astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    u = rng.standard_normal(a.shape)
    u -= (u * a).sum(1, keepdims=True) * a
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    x[rows[:, 1]] = cosines[:, None] * a + np.sqrt(1 - cosines[:, None] ** 2) * u
    exact = np.einsum("ij,ij->i", x[rows[:, 0]].astype(np.float64), x[rows[:, 1]].astype(np.float64))
    return x, np.column_stack([np.sort(rows, 1), exact])


def legacy(x: np.ndarray, threshold: float) -> np.ndarray:
    """The previous default: IVF, 4 sqrt(n) lists, 8 probes, pairs only from the earlier row's query."""
    import faiss

    n, d = x.shape
    nlist = max(1, int(4 * np.sqrt(n)))
    train = np.sort(np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = 64
    index.train(np.ascontiguousarray(x[train], dtype=np.float32))
    for lo in range(0, n, 65_536):
        index.add(np.ascontiguousarray(x[lo : lo + 65_536], dtype=np.float32))
    index.nprobe = 8
    found = []
    for lo in range(0, n, 65_536):
        lims, _, labels = index.range_search(np.ascontiguousarray(x[lo : lo + 65_536], dtype=np.float32), threshold)
        rows = lo + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
        pairs = np.stack([rows, labels.astype(np.int64)], 1)
        found.append(pairs[pairs[:, 0] < pairs[:, 1]])
    return np.concatenate(found)


def run_method(method: str, x: np.ndarray, threshold: float, device: str = "cpu") -> tuple[np.ndarray, dict]:
    cpu = torch.device(device)
    if method == "legacy":
        return legacy(x, threshold), {}
    if method == "stage":
        p = DedupParams(max_identity_similarity=threshold)
        pairs, report = search(x, threshold, cpu, p.exact_search_max, p.min_recall, p.ivf_nlist, p.ivf_nprobe)
        return pairs, report.to_json()
    if method == "ivf-target":
        pairs, report = search(x, threshold, cpu, exact_max=0, min_recall=0.99)
        return pairs, report.to_json()
    dtype = {"exact-bf16": torch.bfloat16, "exact-fp32": torch.float32}[method]
    return exact_pairs(x, threshold, cpu, dtype), {}


def measure(method: str, n: int, threshold: float, data: str, device: str = "cpu") -> dict:
    """One method on freshly generated data, in this process: time, recall per band, peak RSS."""
    x, planted = centroids(n, threshold, data)
    return score(method, x, planted, threshold, device) | {"n": n, "data": data}


def score(method: str, x: np.ndarray, planted: np.ndarray, threshold: float, device: str = "cpu") -> dict:
    """Run one method on x: seconds, recall of the planted pairs overall and per band, peak RSS, its report."""
    start = time.perf_counter()
    pairs, report = run_method(method, x, threshold, device)
    seconds = time.perf_counter() - start
    found = {(int(a), int(b)) for a, b in pairs.tolist()}
    hit = np.array([(int(a), int(b)) in found for a, b, _ in planted])
    edges = [*BANDS, 0.9 + 1e-9]
    bands = {f"{lo:.2f}-{hi:.2f}": float(hit[(planted[:, 2] >= lo) & (planted[:, 2] < hi)].mean())
             for lo, hi in itertools.pairwise(edges)}  # fmt: skip
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"method": method, "device": device, "seconds": round(seconds, 1), "recall": float(hit.mean()),
            "bands": bands, "peak_rss_gib": round(rss, 2), "pairs": len(pairs), "report": report}  # fmt: skip


def random_graphs(n: int = 1_000_000, degrees: tuple[int, ...] = (2, 3)) -> None:
    """Share of identities kept on random look-alike graphs: the independent set vs. one per component."""
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    for degree in degrees:
        rng = np.random.default_rng(0)
        a, b = rng.integers(0, n, n * degree // 2), rng.integers(0, n, n * degree // 2)
        pairs = np.unique(np.sort(np.stack([a, b], 1)[a != b], 1), axis=0)
        graph = coo_array((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        components = connected_components(graph, directed=False)[0]
        start = time.perf_counter()
        keep = independent_set(pairs, rng.random(n), np.arange(n))
        took = time.perf_counter() - start
        print(f"{n:,} identities, {degree} look-alikes each on average: one per component keeps "
              f"{components / n:.1%}, the independent set {keep.mean():.1%} ({took:.1f} s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--data", default="isotropic", choices=["isotropic", "clustered"])
    parser.add_argument("--methods", default="legacy,stage")
    parser.add_argument("--device", default="cpu", help="where the stage's search runs (legacy is CPU FAISS)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one method here and print its JSON
    parser.add_argument("--graphs", action="store_true", help="only the random-graph comparison")
    args = parser.parse_args()
    if args.graphs:
        random_graphs()
        return
    if args.one:
        print(json.dumps(measure(args.one, args.n, args.threshold, args.data, args.device)))
        return
    rows = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--one", method, "--n", str(args.n), "--threshold", str(args.threshold),
               "--data", args.data, "--device", args.device]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{args.data} n={args.n:,} {method:11s} {r['seconds']:8.1f} s  recall {r['recall']:.4f}  bands "
              f"{' '.join(f'{k} {v:.4f}' for k, v in r['bands'].items())}  peak RSS {r['peak_rss_gib']:.2f} GiB",
              flush=True)  # fmt: skip
    base = next((r for r in rows if r["method"] == "legacy"), None)
    if base:
        for r in rows:
            print(f"  {r['method']}: {r['seconds'] / base['seconds']:.2f}x the legacy default's time")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
