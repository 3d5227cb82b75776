"""Benchmark: images/s of (a) the generator alone, (b) the full generate stage (generate, detect, align,
embed, SER-FIQ, attributes, encode, write), (c) a naive loop (one seed per forward pass, a PNG written
per image, as a user of NVIDIA's scripts does); the ratios b/a and b/c; and the generate stage's peak
RSS for 10 vs. 100 shards (in child processes, so each is measured alone).

The full stage is timed twice: end to end, and in steady state (without its one-time start-up:
model loads and, for a random embedder, its calibration batch), which is what a long run sees.

    uv run python bench/pipeline.py                                          # CPU: smoke + random StyleGAN2 256
    uv run python bench/pipeline.py --device cuda --precision bf16 --batch 64 --identities 512   # on a GPU
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, not bench/, first on the path: bench/pipeline.py would shadow the `pipeline` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import importlib.util
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from pipeline.config import CONFIGS_DIR, _read_yaml, deep_merge, validate_params
from pipeline.generate.device_pass import DevicePass
from pipeline.generate.models import DeviceModels
from pipeline.generators import load_generator
from pipeline.generators.checkpoint import save_checkpoint
from pipeline.generators.synthesis import synthesize, to_uint8
from pipeline.runtime.device import synthesis_batch
from pipeline.weights import WeightsStore

#: The random checkpoints are locked here, never in the repository's weights.lock.json.
BENCH_LOCK = Path(tempfile.gettempdir()) / "synthfaces-bench-weights.lock.json"
BENCH_WEIGHTS = WeightsStore(lock_path=BENCH_LOCK)


def params_for(model: str, identities: int, variants: int, shard: int, device: str, precision: str, batch: int):
    raw = deep_merge(_read_yaml(CONFIGS_DIR / "smoke.yaml", "smoke"), {
        "generator": {"model": model, "disc_score": False},
        "identities": {"count": identities, "images_per_identity": variants, "oversample": 1.0, "shard_size": shard},
        "dataset": {"identities": 1, "images_per_identity": 1},
        "runtime": {"devices": [device], "precision": precision, "batch_size": batch},
    })  # fmt: skip
    if model != "smoke":
        raw["attributes"] = {"estimators": ["pose"]}
        raw["variation"] = {"mix_start": 8}
        raw["detect"] = {"min_face_size": 51}  # the default for 256 px (the smoke preset's 24 is for 128 px)
    return validate_params(raw | {"preset": "smoke"})


def generator_alone(params, images: int) -> float:
    device = torch.device(params.runtime.devices[0])
    g = load_generator(params.generator.model, device, params.generator.resolution, BENCH_WEIGHTS)
    rng = np.random.default_rng(0)
    b = params.runtime.batch_size
    micro = synthesis_batch(params.runtime, device, g, b)  # the stage's own choice (1 for StyleGAN on a CPU)

    def run(n: int) -> None:
        for lo in range(0, n, b):
            z = torch.from_numpy(rng.standard_normal((min(b, n - lo), g.z_dim))).to(device, torch.float32)
            ws = g.mapping(z, None, truncation_psi=0.7)
            to_uint8(synthesize(g, ws, params.runtime.precision, "const", micro_batch=micro)).cpu()

    run(b)
    start = time.perf_counter()
    run(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def naive(params, images: int, folder: Path) -> float:
    device = torch.device(params.runtime.devices[0])
    g = load_generator(params.generator.model, device, params.generator.resolution, BENCH_WEIGHTS)
    start = time.perf_counter()
    for seed in range(images):
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, g.z_dim)).to(device, torch.float32)
        with torch.no_grad():
            img = g(z, None, truncation_psi=0.7, noise_mode="const", force_fp32=True)  # as bench/generator.py
        arr = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].cpu().numpy()
        Image.fromarray(arr, "RGB").save(folder / f"seed{seed:04d}.png")
    return images / (time.perf_counter() - start)


def full_stage(params, folder: Path) -> tuple[float, float]:
    """End-to-end and steady-state images/s of run_generate (steady = without the models' start-up)."""
    from pipeline.generate.driver import run_generate

    images = params.identities.count * params.identities.variants_per_identity
    startup: list[float] = []
    builds = {cls: cls.__init__ for cls in (DeviceModels, DevicePass)}

    def timed(build):
        def init(self, *args, **kwargs) -> None:
            t0 = time.perf_counter()
            build(self, *args, **kwargs)
            startup.append(time.perf_counter() - t0)

        return init

    for cls, build in builds.items():
        cls.__init__ = timed(build)  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        run_generate(params, folder, BENCH_WEIGHTS)
        total = time.perf_counter() - start
    finally:
        for cls, build in builds.items():
            cls.__init__ = build  # type: ignore[method-assign]
    return images / total, images / (total - sum(startup))


def _load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_rss_mib(shards: int, device: str) -> float:
    """Peak RSS of a child process generating `shards` smoke shards of 2 identities x 4 images."""
    script = f"""
import importlib.util, pathlib, resource, tempfile
spec = importlib.util.spec_from_file_location("bench_pipeline", {str(Path(__file__).resolve())!r})
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
from pipeline.generate.driver import run_generate
params = bench.params_for("smoke", {shards * 2}, 4, 2, {device!r}, "fp32", 8)
with tempfile.TemporaryDirectory() as tmp:
    run_generate(params, pathlib.Path(tmp))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    env = {**os.environ, "SYNTHFACES_NO_PROGRESS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(name: str, params, images_alone: int, naive_images: int, folder: Path) -> dict[str, float]:
    alone = generator_alone(params, images_alone)
    base = naive(params, naive_images, folder / f"naive-{name}")
    end_to_end, full = full_stage(params, folder / f"full-{name}")
    row = {"generator_alone": alone, "full_stage": full, "full_stage_end_to_end": end_to_end, "naive": base,
           "full/alone": full / alone, "full/naive": full / base}  # fmt: skip
    print(f"{name:10s} generator alone {alone:7.2f} img/s | full stage {full:7.2f} img/s steady "
          f"({end_to_end:.2f} end to end) | naive {base:7.2f} img/s | full/alone {full / alone:.2f}x "
          f"| full/naive {full / base:.2f}x")  # fmt: skip
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--identities", type=int, default=24, help="StyleGAN2 run: identities x 4 images")
    p.add_argument(
        "--batch", type=int, default=8, help="StyleGAN2 face-stack batch (synthesis: runtime.synthesis_batch)"
    )
    p.add_argument("--skip-rss", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("SYNTHFACES_NO_PROGRESS", "1")
    BENCH_LOCK.unlink(missing_ok=True)  # fresh random checkpoints each run
    results: dict[str, dict[str, float]] = {}
    if not args.skip_rss:  # first: Linux children inherit the parent's peak RSS as their floor
        rss = {shards: peak_rss_mib(shards, args.device) for shards in (10, 100)}
        print(f"peak RSS: 10 shards {rss[10]:.0f} MiB, 100 shards {rss[100]:.0f} MiB ({rss[100] / rss[10]:.3f}x)")
        results["peak_rss_mib"] = rss
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for sub in ("naive-smoke", "naive-stylegan2"):
            (folder / sub).mkdir()
        smoke = params_for("smoke", 64, 4, 16, args.device, args.precision, 32)
        results["smoke"] = measure("smoke", smoke, 256, 64, folder)
        torch.manual_seed(0)
        g = _load_bench("generator").CONFIGS["stylegan2"](256)
        save_checkpoint(g, folder / "stylegan2-random-256.pt")
        sg2 = params_for(str(folder / "stylegan2-random-256.pt"), args.identities, 4, 4, args.device,
                         args.precision, args.batch)  # fmt: skip
        n = args.identities * 4
        results["stylegan2-256"] = measure("stylegan2", sg2, n, n, folder)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
