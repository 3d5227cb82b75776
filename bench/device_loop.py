"""Benchmark: what each part of the generate stage's device loop costs per batch, in the units that decide
GPU speed: torch ops dispatched (about one kernel launch each, 5-20 us of launch and Python dispatch on a
GPU), host round trips (`.cpu()`, `.numpy()`, `.tolist()`, `.item()` / bool / int casts, `nonzero`,
`masked_select`: each stalls the host until the device catches up) and GFLOP per image, plus images/s.

Parts: StyleGAN2-256 synthesis (released configuration, random weights), MTCNN detection (facenet-pytorch's
reference and the batched default), alignment, the InceptionResnetV1 backbone, SER-FIQ's dropout passes, the
whole face stack (detect, align, embed, SER-FIQ, scores, copied to host columns; pose runs on those on the host)
and the StyleGAN2-256 discriminator that scores `q_disc`. Faces are smoke-generator faces at the
same resolution, so the detector does real work. Op and round-trip counts do not depend on the device.

    uv run python bench/device_loop.py                                  # CPU, batch 64
    uv run python bench/device_loop.py --device cuda --precision bf16 --batch 128
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, not bench/, first on the path: bench/pipeline.py would shadow the `pipeline` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.faces import faces
from bench.generator import CONFIGS
from pipeline.config import validate_params
from pipeline.faces.analyze import FaceAnalyzer
from pipeline.faces.detect import FacenetMTCNN
from pipeline.generators.stylegan2_discriminator import Discriminator
from pipeline.runtime.device import autocast
from pipeline.runtime.dispatch import count_dispatch


def measure(fn: Callable[[], Any], images: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Ops and round trips of one call, GFLOP per image, and images/s over `repeats` calls after a warm-up."""
    with torch.no_grad():
        fn()
        ops, trips = count_dispatch(fn)
        flops = FlopCounterMode(display=False)
        with flops:
            fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
        seconds = (time.perf_counter() - start) / repeats
    return {
        "ops": ops,
        "ops_per_image": ops / images,
        "round_trips": trips,
        "gflop_per_image": flops.get_total_flops() / images / 1e9,
        "images_per_s": images / seconds,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_loop(device: torch.device, b: int, res: int, precision: str, repeats: int) -> dict[str, dict[str, float]]:
    """Every part measured on `b` images of `res` px; prints a row per part and returns them by name."""
    torch.manual_seed(0)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device loop on {device} ({where}), batch {b}, {res} px, {precision}")

    g = CONFIGS["stylegan2"](res).to(device).eval()
    d = Discriminator(c_dim=0, img_resolution=res, img_channels=3, channel_base=16384 if res <= 256 else 32768,
                      channel_max=512, num_fp16_res=4, conv_clamp=256).to(device).eval()  # fmt: skip
    for net in (g, d):
        net.requires_grad_(False)
    params = validate_params({"embed": {"allow_random": True}})
    analyzer = FaceAnalyzer(params.detect, params.align, params.embed, device, res)
    reference = FacenetMTCNN(res, device=device, min_face_size=analyzer.detector.min_face_size)
    with torch.no_grad():
        ws = g.mapping(torch.randn(b, g.z_dim, device=device), None, truncation_psi=0.7)
        pixels = faces(res, b, device)
        det = analyzer.detector(pixels)
        crops, _ = analyzer.align(pixels, det)
        features = analyzer.embedder.features(crops)
        images = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    found = float(det.found.float().mean())

    fp32 = precision != "fp16"  # the networks' own fp16 layers run only when fp16 is asked for
    parts = {
        "StyleGAN2 synthesis": lambda: g.synthesis(ws, noise_mode="const", force_fp32=fp32),
        "MTCNN, facenet-pytorch (reference)": lambda: reference(pixels),
        "MTCNN, batched (default)": lambda: analyzer.detector(pixels),
        "align (5-point warp)": lambda: analyzer.align(pixels, det),
        "InceptionResnetV1 backbone": lambda: analyzer.embedder.features(crops),
        f"SER-FIQ ({params.embed.serfiq_passes} passes)": lambda: analyzer.embedder.serfiq(
            features, params.embed.serfiq_passes
        ),
        "whole face stack (to host columns)": lambda: analyzer(pixels),
        "StyleGAN2 discriminator (q_disc)": lambda: d(images, None, force_fp32=fp32),
    }
    print(f"faces found by MTCNN: {found:.0%}")
    print(f"{'part':34s} {'ops/batch':>9s} {'ops/img':>8s} {'host trips':>10s} {'GFLOP/img':>9s} {'img/s':>8s}")
    rows = {}
    for name, fn in parts.items():
        with autocast(precision, device):
            rows[name] = r = measure(fn, b, device, repeats)
        print(f"{name:34s} {r['ops']:9d} {r['ops_per_image']:8.1f} {r['round_trips']:10d} "
              f"{r['gflop_per_image']:9.2f} {r['images_per_s']:8.1f}", flush=True)  # fmt: skip
    face, gen = rows["whole face stack (to host columns)"], rows["StyleGAN2 synthesis"]
    disc = rows["StyleGAN2 discriminator (q_disc)"]
    print(f"face stack / generator, images/s: {face['images_per_s'] / gen['images_per_s']:.2f}x; "
          f"q_disc / generator, GFLOP: {disc['gflop_per_image'] / gen['gflop_per_image']:.2f}x")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per part (1 on CPU, 10 on CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    device_loop(
        device, args.batch, args.resolution, args.precision, args.repeats or (10 if device.type == "cuda" else 1)
    )


if __name__ == "__main__":
    main()
