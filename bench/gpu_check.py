"""GPU acceptance check: every figure and CUDA check the README waits for, as one prepared run (<= 8 minutes on
one GPU), printed as one table. Run it first whenever a GPU machine is lent.

    uv run python bench/gpu_check.py             # cuda:0, bf16
    uv run python bench/gpu_check.py --dry-run   # every step on the CPU at toy sizes (tests/test_gpu_check.py)

Steps:
1. gpu tests: every `gpu`-marked test (CUDA against CPU for StyleGAN2/3, the batched MTCNN, nvJPEG);
2. dedup search: bench/dedup.py's stage search on the GPU vs. the previous CPU default, 1M centroids;
3. device loop: bench/device_loop.py's parts at bf16, batch 128, 256 px (ops, host trips, images/s);
4. generate stage: bench/pipeline.py on a random StyleGAN2-256 (the released configuration), full stage vs.
   the generator alone vs. the naive one-seed loop;
5. real-format repro: `dvc repro generate` in a copy of the repository with a random StyleGAN2 written in
   NVIDIA's pickle format (weights, calibrate, generate on the GPU; random weights draw no faces, so curation
   has nothing to keep and the run stops after generate);
6. smoke repro: the whole `dvc repro` of the smoke preset with generation on the GPU.
A failing step is reported in the table and the run goes on; the exit status is 1 if any failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, not bench/, first on the path: bench/pipeline.py would shadow the `pipeline` package.
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class Settings:
    device: str
    precision: str
    dry: bool
    work: Path

    def size(self, gpu: int, dry: int) -> int:
        return dry if self.dry else gpu


def _env() -> dict[str, str]:
    return {**os.environ, "SYNTHFACES_NO_PROGRESS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
            f"{os.environ.get('PATH', '')}"}  # fmt: skip


def _run(cmd: list[str], cwd: Path, timeout: int) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    return proc.stdout + proc.stderr


def gpu_tests(s: Settings) -> str:
    """The `gpu`-marked tests, from the files that hold them (a GPU machine may lack the test-only packages
    other files import)."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "@pytest.mark.gpu" in p.read_text())  # fmt: skip
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    if s.dry:  # on a CPU they would skip: check that they are collected
        out = _run([*cmd, "--collect-only"], ROOT, 120)
        return [line for line in out.splitlines() if "collected" in line or "tests" in line][-1].strip()
    return _run(cmd, ROOT, 240).strip().splitlines()[-1]


def dedup_search(s: Settings) -> str:
    """bench/dedup.py on clustered centroids with planted look-alikes: the stage's exact search on the GPU vs.
    the previous default (CPU FAISS IVF, 8 probes) on the same data and machine."""
    from bench.dedup import centroids, score

    n = s.size(1_000_000, 20_000)
    x, planted = centroids(n, 0.5, "clustered")
    ours = score("stage", x, planted, 0.5, s.device)
    old = score("legacy", x, planted, 0.5)
    return (
        f"{n:,} clustered centroids: stage search ({ours['report']['method']}, {ours['report']['kernel']}) "
        f"{ours['seconds']:.1f} s recall {ours['recall']:.4f} vs. legacy IVF (CPU) {old['seconds']:.1f} s recall "
        f"{old['recall']:.4f} (nearest band {next(iter(old['bands'].values())):.4f}); "
        f"time ratio {ours['seconds'] / max(old['seconds'], 1e-9):.2f}"
    )


def device_loop(s: Settings) -> str:
    import torch

    from bench.device_loop import device_loop as measure

    batch, res = s.size(128, 4), s.size(256, 64)
    rows = measure(torch.device(s.device), batch, res, s.precision, s.size(10, 1))
    face, gen = rows["whole face stack (to host columns)"], rows["StyleGAN2 synthesis"]
    return (
        f"batch {batch} at {res} px: face stack {face['ops_per_image']:.1f} ops/img, {face['round_trips']} host "
        f"trips, {face['images_per_s']:.0f} img/s; synthesis {gen['images_per_s']:.0f} img/s"
    )


def generate_stage(s: Settings) -> str:
    import torch

    from bench.generator import CONFIGS
    from bench.pipeline import BENCH_LOCK, measure, params_for
    from pipeline.generators.checkpoint import save_checkpoint

    BENCH_LOCK.unlink(missing_ok=True)
    torch.manual_seed(0)
    res = s.size(256, 64)
    path = s.work / f"stylegan2-random-{res}.pt"
    save_checkpoint(CONFIGS["stylegan2"](res), path)
    n = s.size(512, 8)
    params = params_for(str(path), n // 4, 4, s.size(32, 2), s.device, s.precision, s.size(64, 4))
    (s.work / "naive-stylegan2").mkdir(exist_ok=True)
    row = measure("stylegan2", params, n, s.size(128, 4), s.work)
    return (
        f"{n} images at {res} px: full stage {row['full_stage']:.1f} img/s = {row['full/alone']:.2f}x the generator "
        f"alone ({row['generator_alone']:.1f}), {row['full/naive']:.1f}x the naive loop ({row['naive']:.1f})"
    )


def _repo_copy(s: Settings, name: str) -> Path:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()  # fmt: skip
    repo = s.work / name
    for rel in listed:
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    git = ["git", "-c", "user.name=gpu-check", "-c", "user.email=gpu-check@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True, capture_output=True)
    return repo


def _judge() -> dict:
    """The judge off where its extra (dlib, face_recognition_models) is not installed, as on a bare GPU machine."""
    import importlib.util

    return {} if importlib.util.find_spec("face_recognition_models") else {"judge": {"model": "none"}}


def _write_params(repo: Path, overrides: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section] = {**(params.get(section) or {}), **values} if isinstance(values, dict) else values
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def real_format_repro(s: Settings) -> str:
    repo = _repo_copy(s, "real-format")
    pickle = repo / "stylegan2-random.pkl"
    if s.dry:
        shutil.copy2(ROOT / "tests" / "golden" / "stylegan2-random-32px.pkl", pickle)
    else:
        _write_ffhq256_pickle(pickle)
    count = s.size(256, 4)
    _write_params(repo, {
        "preset": "smoke",
        "generator": {"model": str(pickle), "resolution": None},
        "identities": {"count": count, "images_per_identity": 2, "oversample": 1.0, "shard_size": s.size(64, 2)},
        "variation": {"mix": True, "mix_start": s.size(8, 4), "preserve": [],
                      "edits": {"yaw": [], "smoke_pitch": [], "smoke_smile": []}},
        "detect": {"min_face_size": s.size(51, 8)},
        "attributes": {"estimators": ["pose"]},
        "dataset": {"identities": 1, "images_per_identity": 1},
        "runtime": {"devices": [s.device], "precision": s.precision},
        **_judge(),
    })  # fmt: skip
    start = time.perf_counter()
    _run([sys.executable, "-m", "dvc", "repro", "generate"], repo, 300)
    seconds = time.perf_counter() - start
    manifest = json.loads((repo / "data" / "candidates" / "manifest.json").read_text())
    return (
        f"{manifest['rows']} candidates from NVIDIA-format weights ({manifest['generator']['resolution']} px) in "
        f"{seconds:.0f} s (weights + calibrate + generate, dvc included)"
    )


def _write_ffhq256_pickle(path: Path) -> None:
    """A random StyleGAN2 with the released FFHQ-256 configuration, written in NVIDIA's pickle format."""
    from bench.generator import CONFIGS
    from tests.nvidia_format import write_network_pickle

    g = CONFIGS["stylegan2"](256)
    write_network_pickle(path, g, g.init_kwargs)


def smoke_repro(s: Settings) -> str:
    repo = _repo_copy(s, "smoke")
    _write_params(repo, {"preset": "smoke", "runtime": {"devices": [s.device], "precision": s.precision}, **_judge()})
    if s.dry:  # the suite's e2e test builds the smoke preset on the CPU; here: the params check and the pipeline
        _run([sys.executable, "-m", "dvc", "repro", "weights"], repo, 120)
        stages = _run([sys.executable, "-m", "dvc", "dag", "--md"], repo, 60).count("-->")
        return f"params accepted by the weights stage; dvc dag: {stages} edges"
    start = time.perf_counter()
    _run([sys.executable, "-m", "dvc", "repro"], repo, 400)
    seconds = time.perf_counter() - start
    counts = json.loads((repo / "data" / "dataset" / "manifest.json").read_text())["counts"]
    return (
        f"{counts['identities']} classes x {counts['images_per_identity']} from {counts['candidates']} candidates "
        f"in {seconds:.0f} s"
    )


STEPS: dict[str, Callable[[Settings], str]] = {
    "gpu tests": gpu_tests,
    "dedup search": dedup_search,
    "device loop": device_loop,
    "generate stage": generate_stage,
    "real-format repro": real_format_repro,
    "smoke repro": smoke_repro,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU at toy sizes")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    args = parser.parse_args(argv)
    os.environ["SYNTHFACES_NO_PROGRESS"] = "1"
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        s = Settings("cpu" if args.dry_run else "cuda:0", "fp32" if args.dry_run else "bf16", args.dry_run, Path(tmp))
        for name in args.steps.split(","):
            start = time.perf_counter()
            try:
                status, figures = "ok", STEPS[name](s)
            except Exception as err:  # a failed step is a row of the table, not the end of the run
                traceback.print_exc()
                status, figures = "FAILED", str(err).splitlines()[0][:300]
            rows.append((name, status, time.perf_counter() - start, figures))
            print(f"step {name}: {status} in {rows[-1][2]:.0f} s: {figures}", flush=True)
    print(f"\n| step ({'CPU dry run' if args.dry_run else 'cuda:0, bf16'}) | status | seconds | figures |")
    print("|---|---|---|---|")
    for name, status, seconds, figures in rows:
        print(f"| {name} | {status} | {seconds:.0f} | {figures} |")
    return 1 if any(status != "ok" for _, status, _, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
