"""Benchmark: samples/s of the face stack (MTCNN detect + align + InceptionResnetV1 embed + quality scores,
SER-FIQ included) on 256 px and 1024 px inputs, batched as the generate stage runs it.

Inputs are smoke-generator faces rendered at each resolution (MTCNN finds faces in them, so every
stage does real work). Also prints the cost of SER-FIQ's stochastic passes, of MTCNN's pyramid with
the default min_face_size versus facenet-pytorch's default of 20 px, and of facenet-pytorch's own
MTCNN (`detect.model: mtcnn_facenet`) in place of the batched one, measured in the same run.

`--reference DIR` runs another checkout's bench/faces.py (e.g. a worktree of the previous release) in
turns with this one, each in its own process, and prints the ratio of their default rows.

    uv run python bench/faces.py
    uv run python bench/faces.py --reference /tmp/previous --rounds 3
    uv run python bench/faces.py --device cuda --images 256 --batch 64
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, not bench/, first on the path: bench/pipeline.py would shadow the `pipeline` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import re
import subprocess
import time

import numpy as np
import torch

from pipeline.config import deep_merge, validate_params
from pipeline.faces.analyze import FaceAnalyzer
from pipeline.generators import load_generator
from pipeline.generators.synthesis import to_uint8
from pipeline.identities.sampling import Latents


def faces(resolution: int, n: int, device: torch.device) -> torch.Tensor:
    params = validate_params({"generator": {"resolution": resolution}, "variation": {"mix_start": 1}})
    g = load_generator("smoke", device, resolution=resolution)
    ids = np.arange(n)
    with torch.no_grad():
        ws = Latents(g, params.seed, params.generator, params.variation, device).ws(ids, np.zeros_like(ids))
        return to_uint8(g.synthesis(ws)).permute(0, 2, 3, 1)


def rate(analyzer: FaceAnalyzer, pixels: torch.Tensor, batch: int, device: torch.device) -> tuple[float, float]:
    analyzer(pixels[:batch])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    found = 0
    for lo in range(0, len(pixels), batch):
        res = analyzer(pixels[lo : lo + batch])
        found += int((res.columns["det_prob"] > 0).sum())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(pixels) / (time.perf_counter() - start), found / len(pixels)


DEFAULT_ROW = re.compile(r"^\s*(\d+) default \(SER-FIQ 100 passes\)\s+([\d.]+)", re.MULTILINE)


def default_rates(checkout: Path, resolution: int, extra: list[str]) -> float:
    """samples/s of the default row of `checkout`'s bench/faces.py at one resolution, in its own process."""
    out = subprocess.run(
        [sys.executable, str(checkout / "bench" / "faces.py"), "--resolutions", str(resolution), *extra],
        cwd=checkout, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(DEFAULT_ROW.search(out).group(2))  # type: ignore[union-attr]


def compare(reference: Path, resolutions: list[int], rounds: int, extra: list[str]) -> None:
    """This checkout and `reference` in turns, `rounds` times per resolution; medians and their ratio."""
    ours_dir = Path(__file__).resolve().parents[1]
    for res in resolutions:
        ours, theirs = [], []
        for _ in range(rounds):
            ours.append(default_rates(ours_dir, res, extra))
            theirs.append(default_rates(reference.resolve(), res, extra))
        a, b = float(np.median(ours)), float(np.median(theirs))
        print(f"{res:>6} px: this checkout {a:.2f} samples/s, reference {b:.2f} (median of {rounds}): {a / b:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolutions", default="256,1024")
    parser.add_argument("--images", type=int, default=None, help="images per measurement (64 on CUDA, 16 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (64 on CUDA, 8 on CPU)")
    parser.add_argument("--reference", type=Path, default=None, help="another checkout to compare with, in turns")
    parser.add_argument("--rounds", type=int, default=3, help="turns per resolution with --reference")
    args = parser.parse_args()
    if args.reference is not None:
        extra = ["--device", args.device] + [f"--{k}={v}" for k in ("images", "batch") if (v := getattr(args, k))]
        compare(args.reference, [int(r) for r in args.resolutions.split(",")], args.rounds, extra)
        return
    device = torch.device(args.device)
    n = args.images or (64 if device.type == "cuda" else 16)
    batch = args.batch or (64 if device.type == "cuda" else 8)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"face stack on {device} ({where}); {n} images per row, batch {batch}")
    print(f"{'input':>6} {'variant':<32} {'samples/s':>10} {'found':>6}")
    for res in (int(r) for r in args.resolutions.split(",")):
        pixels = faces(res, n, device)
        rows = [
            ("default (SER-FIQ 100 passes)", {}),
            ("SER-FIQ off", {"embed": {"serfiq_passes": 0}}),
            ("min_face_size 20 (facenet default)", {"detect": {"min_face_size": 20}}),
            ("facenet-pytorch's MTCNN", {"detect": {"model": "mtcnn_facenet"}}),
        ]
        for label, override in rows:
            params = validate_params(deep_merge({"embed": {"allow_random": True}}, override))
            analyzer = FaceAnalyzer(params.detect, params.align, params.embed, device, res)
            r, found = rate(analyzer, pixels, batch, device)
            print(f"{res:>6} {label:<32} {r:10.2f} {found:6.0%}")


if __name__ == "__main__":
    main()
