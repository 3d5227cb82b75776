"""Benchmark: time and peak RSS of every stage after generation (filter, dedup, balance, export, report)
on N synthetic candidates written in the real candidate format, without the generator; optionally the
export of another checkout (`--reference-export`, e.g. the previous release) on the same data.

Candidates have the real columns and realistic sizes: a 512-d float16 embedding, box, landmarks, every
q_* score, smoke attributes (identity-level `smoke_hair`, sample-level `yaw_bin`), a JPEG full frame and
a PNG aligned crop (a pool of distinct images, re-used). Embeddings have look-alike structure: each
identity is a random direction, `--lookalikes` of them are drawn near an earlier identity (cosine
~0.75, above the dedup threshold), samples scatter around their identity (cosine ~0.8) and a few
drift away. Each stage runs as its own process (`python -m stages.NAME`, as dvc runs it), so its peak
RSS is its own.

    uv run python bench/curation.py                                   # 1,000,000 candidates
    uv run python bench/curation.py --candidates 5000000 --image-size 32 --dataset-identities 250000
    uv run python bench/curation.py --workdir W --also-formats webdataset,parquet,recordio,imagefolder,lmdb
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, not bench/, first on the path: bench/pipeline.py would shadow the `pipeline` package.
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

import argparse
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pyarrow as pa
import yaml
from PIL import Image, ImageDraw, ImageFilter

from pipeline.faces.columns import QUALITY_COLUMNS
from pipeline.shards.candidates import MANIFEST, ShardStore, candidate_schema, plan_shards, sample_key
from pipeline.shards.io import write_json_atomic

ATTRIBUTE_FIELDS = [
    pa.field("attr_pitch", pa.float32()), pa.field("attr_roll", pa.float32()), pa.field("attr_yaw", pa.float32()),
    pa.field("attr_yaw_bin", pa.string()), pa.field("attr_smoke_hair", pa.string()),
    pa.field("attr_smoke_skin", pa.string()),
]  # fmt: skip
YAW_BINS = np.array(["left", "frontal", "right"], dtype=object)


def image_pool(n: int, size: int, full_size: int, seed: int = 0) -> tuple[list[bytes], list[bytes]]:
    """n distinct cartoon faces about as compressible as the smoke renderer's (at 112 px: PNG crop ~10.5 KB,
    JPEG frame ~2.8 KB, as the smoke preset's): PNG aligned crops and JPEG full frames."""
    rng = np.random.default_rng(seed)
    aligned, full = [], []
    for _ in range(n):
        img = Image.new("RGB", (112, 112), tuple(int(x) for x in rng.integers(30, 220, 3)))
        draw = ImageDraw.Draw(img)
        draw.ellipse([20 + int(rng.integers(-5, 5)), 10, 92, 105], fill=tuple(int(x) for x in rng.integers(90, 230, 3)))
        for x in (40, 72):
            draw.ellipse([x - 6, 45, x + 6, 53], fill=(40, 30, 30))
        draw.rectangle([42, 80, 70, 86], fill=(150, 60, 60))
        img = img.filter(ImageFilter.GaussianBlur(2)).resize((size, size))
        noise = rng.integers(-1, 2, (size, size, 3)) * (rng.random((size, size, 1)) < 0.2)
        pixels = np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
        aligned.append(buf.getvalue())
        buf = io.BytesIO()
        Image.fromarray(pixels).resize((full_size, full_size)).save(buf, format="JPEG", quality=95)
        full.append(buf.getvalue())
    return aligned, full


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def identity_directions(n: int, lookalikes: float, rng: np.random.Generator) -> np.ndarray:
    centres = unit(rng.standard_normal((n, 512), dtype=np.float32))
    near = np.flatnonzero(rng.random(n) < lookalikes)
    near = near[near > 0]
    partner = (rng.random(len(near)) * near).astype(np.int64)  # an earlier identity
    noise = unit(rng.standard_normal((len(near), 512), dtype=np.float32))
    centres[near] = unit(0.75 * centres[partner] + 0.66 * noise)
    return centres


def shard_table(spec, variants: int, centres: np.ndarray, pools, rng: np.random.Generator) -> pa.Table:
    ids = np.repeat(np.arange(spec.start, spec.stop, dtype=np.int64), variants)
    var = np.tile(np.arange(variants, dtype=np.int16), spec.stop - spec.start)
    n = len(ids)
    emb = unit(centres[ids] + 0.033 * rng.standard_normal((n, 512), dtype=np.float32))
    drift = rng.random(n) < 0.02
    emb[drift] = unit(rng.standard_normal((int(drift.sum()), 512), dtype=np.float32))
    det = np.where(rng.random(n) < 0.03, 0.5, 0.999).astype(np.float32)
    q = {
        "q_finite": np.ones(n), "q_face_fraction": np.full(n, 0.3), "q_roll": rng.normal(0, 5, n),
        "q_eye_distance": np.full(n, 0.4), "q_nose_position": rng.normal(0.5, 0.08, n).clip(0.05, 0.95),
        "q_landmarks_inside": np.ones(n), "q_align_residual": np.full(n, 0.03), "q_sharpness": np.full(n, 100.0),
        "q_brightness": np.full(n, 0.5), "q_clipped": np.full(n, 0.01), "q_serfiq": np.full(n, 0.8),
        "q_disc": np.full(n, np.nan),
    }  # fmt: skip
    hair = np.where(rng.random(spec.stop - spec.start) < 0.45, "light", "dark").astype(object)
    skin = np.array(["light", "medium", "dark"], dtype=object)[rng.integers(0, 3, spec.stop - spec.start)]
    yaw = rng.normal(0, 20, n)
    pick = rng.integers(0, len(pools[0]), n)
    columns = {
        "key": [sample_key(int(i), int(v)) for i, v in zip(ids, var, strict=True)], "identity": ids, "variant": var,
        "seed": ids * 1000 + var, "psi": np.full(n, 0.8, np.float32), "det_prob": det, "n_faces": np.ones(n, np.int16),
        "box": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(4 * n, np.float32) * 100), 4),
        "landmarks": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(10 * n, np.float32) * 100), 10),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float16).ravel()), 512),
        **{c: np.asarray(q[c], np.float32) for c in QUALITY_COLUMNS},
        "attr_pitch": rng.normal(0, 5, n).astype(np.float32), "attr_roll": rng.normal(0, 5, n).astype(np.float32),
        "attr_yaw": yaw.astype(np.float32), "attr_yaw_bin": YAW_BINS[np.digitize(yaw, [-15, 15])],
        "attr_smoke_hair": np.repeat(hair, variants), "attr_smoke_skin": np.repeat(skin, variants),
        "image": [pools[1][p] for p in pick], "aligned": [pools[0][p] for p in pick],
        "model_sha256": ["0" * 64] * n, "params_fingerprint": ["bench"] * n,
    }  # fmt: skip
    schema = candidate_schema(ATTRIBUTE_FIELDS)
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) if not isinstance(columns[f.name], pa.Array)
                     else columns[f.name] for f in schema}, schema=schema)  # fmt: skip


def write_candidates(folder: Path, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    identities = args.candidates // args.variants
    centres = identity_directions(identities, args.lookalikes, rng)
    pools = image_pool(args.image_pool, args.image_size, args.full_size)
    store = ShardStore(folder)
    markers = []
    for spec in plan_shards(identities, args.shard_size):
        table = shard_table(spec, args.variants, centres, pools, np.random.default_rng([1, spec.index]))
        markers.append(store.write_shard(spec, table, "bench", {"faces_found": table.num_rows}))
    manifest = {
        "generator": {"model": "smoke", "label": "bench (synthetic candidates)", "license": "none",
                      "license_id": "none", "sha256": "0" * 64, "resolution": args.full_size, "num_ws": 2},
        "embedder_weights": "none", "precision": "fp32", "jpeg_encoder": "pillow", "fingerprint": "bench",
        "identities": identities, "variants_per_identity": args.variants,
        "rows": sum(m["rows"] for m in markers), "attributes": {}, "shards": markers,
    }  # fmt: skip
    write_json_atomic(folder / MANIFEST, manifest)


def params_file(path: Path, args: argparse.Namespace, identities: int) -> None:
    params = {
        "preset": "smoke",
        "identities": {"count": identities, "images_per_identity": args.variants, "oversample": 1.0,
                       "shard_size": args.shard_size},
        "dedup": {"max_identity_similarity": 0.6, "min_sample_consistency": 0.3, "max_sample_similarity": 0.98},
        "dataset": {"identities": args.dataset_identities, "images_per_identity": args.images_per_identity},
        "balance": {"targets": {"smoke_hair": {"light": 0.5}, "yaw_bin": {"frontal": 0.4}}, "tolerance": 0.01},
        "export": {"workers": args.workers, "samples_per_shard": 10_000, "formats": args.formats.split(",")},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(params))
    if args.also_formats:
        params["export"]["formats"] = args.also_formats.split(",")
        path.with_name("params-formats.yaml").write_text(yaml.safe_dump(params))
    del params["export"]["formats"]
    del params["export"]["workers"]  # a reference checkout may predate export.workers
    path.with_name("params-reference.yaml").write_text(yaml.safe_dump(params))


STAGES = {
    "filter": ["--candidates", "candidates", "--out", "filter.parquet"],
    "dedup": ["--candidates", "candidates", "--filter", "filter.parquet", "--out", "dedup.parquet",
              "--capacity", "capacity.csv"],
    "balance": ["--candidates", "candidates", "--dedup", "dedup.parquet", "--out", "selection.parquet"],
    "export": ["--candidates", "candidates", "--selection", "selection.parquet", "--out", "dataset"],
    "report": ["--candidates", "candidates", "--filter", "filter.parquet", "--dedup", "dedup.parquet",
               "--selection", "selection.parquet", "--dataset", "dataset", "--capacity", "capacity.csv",
               "--metrics", "metrics.json", "--plots", "plots", "--pictures", "."],
}  # fmt: skip


def run_stage(
    name: str, work: Path, code: Path = ROOT, out: str | None = None, params: str = "params.yaml"
) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one stage process (the largest of it and the workers it spawns),
    running the code of checkout `code`. Export's output folder is removed first, as dvc does, so it is
    not timed deleting an earlier run's files."""
    env = {**os.environ, "PYTHONPATH": str(code), "SYNTHFACES_NO_PROGRESS": "1"}
    args = STAGES[name] if out is None else [*STAGES[name][:-1], out]
    if name == "export":
        shutil.rmtree(work / args[-1], ignore_errors=True)
    cmd = [sys.executable, "-m", f"stages.{name}", "--params", params, *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {name} failed:\n{err[-4000:]}")
    lines = [ln for ln in err.splitlines() if f"{name}:" in ln]
    print("   ", *(ln.split(" - ")[-1][:160] for ln in lines[-6:]), sep="\n    ")
    return wall, usage.ru_maxrss / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", type=int, default=1_000_000)
    p.add_argument("--variants", type=int, default=8, help="candidates per identity")
    p.add_argument("--shard-size", type=int, default=256, help="identities per candidate shard")
    p.add_argument("--dataset-identities", type=int, default=60_000)
    p.add_argument("--images-per-identity", type=int, default=4)
    p.add_argument("--lookalikes", type=float, default=0.05, help="share of identities drawn near an earlier one")
    p.add_argument("--image-size", type=int, default=112, help="aligned crop size (px)")
    p.add_argument("--full-size", type=int, default=128, help="full frame size (px)")
    p.add_argument("--image-pool", type=int, default=512, help="distinct images re-used across candidates")
    p.add_argument("--workers", default="auto", help="export.workers")
    p.add_argument("--formats", default="webdataset,parquet", help="export.formats of the export stage")
    p.add_argument(
        "--also-formats",
        default=None,
        help="after the stages, export again with these formats (e.g. all five) and print the ratio",
    )
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument(
        "--reference-export",
        type=Path,
        default=None,
        help="a checkout whose export stage runs on the same selection afterwards (git worktree)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="synthfaces-bench-curation-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        if not (work / "candidates" / MANIFEST).is_file():
            # In a child process: a stage's peak RSS counts what its parent held when it was started.
            writer = multiprocessing.get_context("spawn").Process(
                target=write_candidates, args=(work / "candidates", args)
            )
            writer.start()
            writer.join()
            if writer.exitcode:
                raise SystemExit("writing the candidates failed")
        manifest = json.loads((work / "candidates" / MANIFEST).read_text())
        size = sum(f.stat().st_size for f in (work / "candidates").glob("*.parquet"))
        took = time.perf_counter() - start
        print(f"{manifest['rows']:,} candidates of {manifest['identities']:,} identities in "
              f"{len(manifest['shards'])} shards, {size / 2**30:.1f} GiB ({took:.0f} s)")  # fmt: skip
        params_file(work / "params.yaml", args, manifest["identities"])
        print(f"{'stage':8s} {'seconds':>8s} {'peak RSS GiB':>13s}")
        times = {}
        for name in filter(None, args.stages.split(",")):
            wall, rss = run_stage(name, work)
            times[name] = wall
            print(f"{name:8s} {wall:8.1f} {rss:13.2f}", flush=True)
        if args.also_formats:
            wall, rss = run_stage("export", work, ROOT, "dataset-formats", "params-formats.yaml")
            print(f"{'export (' + args.also_formats + ')'} {wall:8.1f} {rss:13.2f}", flush=True)
            if "export" in times:
                print(f"export: {args.also_formats} / {args.formats} = {wall / times['export']:.2f}x")
        if args.reference_export:
            wall, rss = run_stage(
                "export", work, args.reference_export.resolve(), "dataset-reference", "params-reference.yaml"
            )
            print(f"{'export (reference)':8s} {wall:8.1f} {rss:13.2f}", flush=True)
            if "export" in times:
                print(f"export: reference / ours = {wall / times['export']:.2f}x")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
