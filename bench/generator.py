"""Benchmark: images/s of our StyleGAN generator at batch sizes 1..64 vs. a naive one-seed-at-a-time loop.

The naive loop is what NVIDIA's generation script does: one seed per forward pass, the image
copied to the CPU and written as a PNG before the next seed. Networks have random weights in the
official FFHQ configurations (same compute as the released pickles). Prints a table and the ratio
of our best throughput to the naive loop, measured in the same run on the same device.

    uv run python bench/generator.py                       # CPU, StyleGAN2 256 px, fp32
    uv run python bench/generator.py --device cuda --precisions fp32,fp16,bf16
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, not bench/, first on the path: bench/pipeline.py would shadow the `pipeline` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from pipeline.generators.stylegan2 import StyleGAN2Generator
from pipeline.generators.stylegan3 import StyleGAN3Generator
from pipeline.runtime.device import autocast


def _built(cls: type, family: str, **kwargs: object) -> torch.nn.Module:
    """The module plus the constructor record a loaded network carries (so save_checkpoint can write it)."""
    module = cls(**kwargs)
    module.family, module.init_kwargs = family, kwargs
    return module


CONFIGS = {
    # StyleGAN2 FFHQ 256 (the released stylegan2-ffhq-256x256 configuration)
    "stylegan2": lambda res: _built(
        StyleGAN2Generator, "stylegan2",
        z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3, mapping_kwargs={"num_layers": 8},
        synthesis_kwargs={
            "channel_base": 16384 if res <= 256 else 32768, "channel_max": 512, "num_fp16_res": 4, "conv_clamp": 256,
        },
    ),
    "stylegan3-t": lambda res: _built(
        StyleGAN3Generator, "stylegan3",
        z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3, mapping_kwargs={"num_layers": 2},
        channel_base=32768, channel_max=512,
    ),
}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(G: torch.nn.Module, device: torch.device, batch: int, images: int, precision: str) -> float:
    """Batched generation, images kept on the device (what the pipeline does before detection)."""
    rng = np.random.default_rng(0)
    force_fp32 = precision != "fp16"

    def run(n: int) -> None:
        for lo in range(0, n, batch):
            z = torch.from_numpy(rng.standard_normal((min(batch, n - lo), G.z_dim))).to(device, torch.float32)
            with torch.no_grad(), autocast("bf16" if precision == "bf16" else "fp32", device):
                img = G(z, None, truncation_psi=0.7, noise_mode="const", force_fp32=force_fp32)
            (img.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)

    run(batch)  # warm-up
    sync(device)
    start = time.perf_counter()
    run(images)
    sync(device)
    return images / (time.perf_counter() - start)


def naive(G: torch.nn.Module, device: torch.device, images: int, out: Path) -> float:
    """One seed at a time, copy to CPU, write a PNG (NVIDIA's gen_images.py loop)."""

    def one(seed: int) -> None:
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).to(device, torch.float32)
        with torch.no_grad():
            img = G(z, None, truncation_psi=0.7, noise_mode="const", force_fp32=True)
        arr = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
        Image.fromarray(arr[0].cpu().numpy(), "RGB").save(out / f"seed{seed:04d}.png")

    one(0)
    sync(device)
    start = time.perf_counter()
    for seed in range(images):
        one(seed)
    sync(device)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(CONFIGS), default="stylegan2")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument(
        "--precisions", default="fp32", help="comma list of fp32, fp16, bf16 (fp16/bf16 matter on CUDA)"
    )
    parser.add_argument(
        "--images", type=int, default=None, help="images per measurement (default: 64 on CUDA, 16 on CPU)"
    )
    parser.add_argument(
        "--naive-images", type=int, default=None, help="images for the naive loop (default: as --images)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    device = torch.device(args.device)
    images = args.images or (256 if device.type == "cuda" else 16)
    torch.manual_seed(0)
    G = CONFIGS[args.arch](args.resolution).eval().requires_grad_(False).to(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    params_m = sum(p.numel() for p in G.parameters()) / 1e6
    print(f"{args.arch} {args.resolution}px random weights, {params_m:.1f}M params, device {device} ({where})")
    with tempfile.TemporaryDirectory() as tmp:
        base = naive(G, device, args.naive_images or images, Path(tmp))
    print(f"naive loop (batch 1, PNG per image): {base:8.2f} img/s")
    results = {"arch": args.arch, "resolution": args.resolution, "device": str(device), "naive_img_s": base, "ours": []}
    print(f"{'precision':>9} {'batch':>5} {'img/s':>9} {'x naive':>8}")
    for precision in args.precisions.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            rate = ours(G, device, batch, max(images, batch), precision)
            results["ours"].append({"precision": precision, "batch": batch, "img_s": rate, "ratio": rate / base})
            print(f"{precision:>9} {batch:>5} {rate:9.2f} {rate / base:8.2f}")
    best = max(results["ours"], key=lambda r: r["img_s"])
    print(
        f"best: {best['precision']} batch {best['batch']}: {best['img_s']:.2f} img/s "
        f"= {best['ratio']:.2f}x the naive loop"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
