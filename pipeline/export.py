"""The export stage's library: selected candidates -> WebDataset + Parquet shards, metadata, card, manifest."""

from __future__ import annotations

import io
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

import pipeline
from pipeline.config import Params
from pipeline.curation import read_curation, reason_counts
from pipeline.faces.quality import QUALITY_COLUMNS
from pipeline.identities.consistency import normalise
from pipeline.report.card import render_card
from pipeline.runtime.progress import progress
from pipeline.shards.candidates import IMAGE_COLUMNS, MANIFEST, read_candidates
from pipeline.shards.io import atomic_path, sha256_file, write_bytes_atomic, write_json_atomic
from pipeline.shards.notice import description, encode_with_notice
from pipeline.shards.writers import WRITERS

log = logging.getLogger(__name__)

SHARD_PREFIX = "train"
JSON_FIELDS = ("identity", "variant", "seed", "psi", "det_prob", "n_faces", "box", "landmarks", "model_sha256")


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return f"synthfaces {pipeline.__version__}"
    return f"synthfaces {pipeline.__version__} ({commit})"


def export_order(selected: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Deterministic sample order: a seeded shuffle so every shard mixes many classes (streams well)."""
    df = selected.sort_values("key", kind="stable").reset_index(drop=True)
    if params.export.shuffle:
        df = df.iloc[np.random.default_rng([params.seed, 0x5EED]).permutation(len(df))].reset_index(drop=True)
    return df


def partition(sizes: list[int], max_count: int, max_bytes: int) -> list[slice]:
    """Consecutive slices with at most max_count samples and (unless one sample is larger) max_bytes."""
    slices, start, acc = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_count or acc + size > max_bytes):
            slices.append(slice(start, i))
            start, acc = i, 0
        acc += size
    if start < len(sizes):
        slices.append(slice(start, len(sizes)))
    return slices


def _reencode(data: bytes, fmt: str, quality: int, text: str) -> bytes:
    return encode_with_notice(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), fmt, quality, text)


def _json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [round(float(v), 4) for v in value]
    if isinstance(value, np.floating | float):
        return round(float(value), 5)
    if isinstance(value, np.integer):
        return int(value)
    return value


def run_export(params: Params, candidates_dir: Path, selection_path: Path, out_dir: Path) -> dict[str, Any]:
    """Write the dataset into out_dir; returns its manifest."""
    ex = params.export
    selection = read_curation(selection_path)
    _clear_previous(out_dir)
    cand_manifest = json.loads((candidates_dir / MANIFEST).read_text())
    meta_columns = [
        c
        for c in pq.read_schema(candidates_dir / f"{cand_manifest['shards'][0]['shard']}.parquet").names
        if c not in IMAGE_COLUMNS
    ]
    meta = read_candidates(candidates_dir, meta_columns).to_pandas()
    selected = selection[selection["keep"]][["key", "class"]].merge(meta, on="key", how="left", validate="1:1")
    ordered = export_order(selected, params)
    wanted = set(ordered["key"])
    images = read_candidates(candidates_dir, ["key", *(["aligned", "image"] if ex.include_full else ["aligned"])])
    mask = pc.is_in(images.column("key"), value_set=pa.array(sorted(wanted)))
    images = images.filter(mask).to_pandas().set_index("key")
    text = description(cand_manifest["generator"]["label"] or cand_manifest["generator"]["model"])
    attr_columns = sorted(c for c in meta_columns if c.startswith("attr_"))

    samples = []
    bar = progress(len(ordered), "export")
    with bar:
        for rec in ordered.to_dict("records"):
            full = (
                _reencode(images.at[rec["key"], "image"], ex.image_format, ex.image_quality, text)
                if ex.include_full
                else None
            )
            m = {k: _json_value(rec[k]) for k in (*JSON_FIELDS, *QUALITY_COLUMNS, *attr_columns)}
            m["key"], m["class"] = rec["key"], int(rec["class"])
            samples.append(
                {
                    "key": rec["key"], "class": int(rec["class"]), "identity": int(rec["identity"]),
                    "variant": int(rec["variant"]),
                    "image": _reencode(images.at[rec["key"], "aligned"], ex.image_format, ex.image_quality, text),
                    "full": full, "meta": m,
                }
            )  # fmt: skip
            bar.update()

    slices = partition(
        [len(s["image"]) + len(s["full"] or b"") + 1024 for s in samples], ex.samples_per_shard, ex.max_shard_bytes
    )
    files: list[dict[str, Any]] = []
    shard_of: dict[str, str] = {}
    for k, sl in enumerate(slices):
        name = f"{SHARD_PREFIX}-{k:06d}"
        for s in samples[sl]:
            shard_of[s["key"]] = name
        for fmt in ex.formats:
            writer = WRITERS.create(fmt)
            path = out_dir / writer.folder / f"{name}{writer.suffix}"
            writer.write(path, samples[sl], ex.image_format)
            files.append({"path": path.relative_to(out_dir).as_posix(), "samples": sl.stop - sl.start})

    metadata = ordered.sort_values("key", kind="stable").reset_index(drop=True)
    metadata["shard"] = metadata["key"].map(shard_of)
    table = pa.Table.from_pandas(metadata, preserve_index=False)
    table = table.cast(
        pa.schema([f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in table.schema])
    )
    with atomic_path(out_dir / "metadata.parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    files.append({"path": "metadata.parquet", "samples": len(metadata)})

    counts = {
        "identities": int(selected["identity"].nunique()),
        "images_per_identity": params.dataset.images_per_identity,
        "samples": len(selected),
        "candidates": int(cand_manifest["rows"]),
    }
    card_info = {
        "name": params.dataset.name,
        "generator": cand_manifest["generator"],
        "embedder_weights": cand_manifest["embedder_weights"],
        "counts": counts,
        "reasons": reason_counts(selection),
        "attributes": {c: selected[c].value_counts().to_dict() for c in attr_columns if selected[c].dtype == object},
        "quality": {c: tuple(np.percentile(selected[c], [5, 50, 95]).tolist()) for c in QUALITY_COLUMNS},
        "similarity": similarity_summary(selected),
        "formats": list(ex.formats),
        "shards": len(slices),
        "params": params.model_dump(mode="json"),
        "code_version": code_version(),
        "smoke": params.generator.model == "smoke",
    }
    write_bytes_atomic(out_dir / "README.md", render_card(card_info).encode())
    files.append({"path": "README.md", "samples": None})
    for f in files:
        path = out_dir / f["path"]
        f["sha256"], f["bytes"] = sha256_file(path), path.stat().st_size
    manifest = {
        "name": params.dataset.name,
        "counts": {**counts, "shards": len(slices)},
        "classes": counts["identities"],
        "formats": list(ex.formats),
        "files": files,
        "generator": cand_manifest["generator"],
        "embedder_weights": cand_manifest["embedder_weights"],
        "candidates_fingerprint": cand_manifest["fingerprint"],
        "params": params.model_dump(mode="json"),
        "code_version": card_info["code_version"],
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def _clear_previous(out_dir: Path) -> None:
    """Remove an earlier export's shards so no file from another plan survives beside the new ones."""
    for writer_name in WRITERS.names():
        folder = out_dir / WRITERS.create(writer_name).folder
        for path in folder.glob(f"{SHARD_PREFIX}-*") if folder.is_dir() else []:
            path.unlink()


def similarity_summary(selected: pd.DataFrame, max_samples: int = 4000) -> dict[str, float]:
    """Mean genuine and impostor cosine over (a deterministic sample of) the selected embeddings."""
    if len(selected) < 2:
        return {}
    df = selected.sort_values("key").iloc[:max_samples]
    emb = normalise(np.stack(df["embedding"].to_numpy()).astype(np.float32))
    sim = emb @ emb.T
    ids = df["identity"].to_numpy()
    same = ids[:, None] == ids[None, :]
    off = ~np.eye(len(ids), dtype=bool)
    genuine, impostor = sim[same & off], sim[~same]
    return {
        "genuine_mean": float(genuine.mean()) if genuine.size else float("nan"),
        "impostor_mean": float(impostor.mean()) if impostor.size else float("nan"),
    }
