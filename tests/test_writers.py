"""Shard writers round-trip through the readers trainers use; images carry the synthetic notice."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipeline.export.run import partition
from pipeline.shards.layout import Layout
from pipeline.shards.notice import TRAINED_ALGORITHMIC_MEDIA, encode_with_notice, read_notice
from pipeline.shards.writers import WRITERS

LAYOUT = Layout(classes=3, samples=5, image_ext="jpg")


def samples(n: int = 5, full: bool = False) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = encode_with_notice(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), "jpg", 90, "synthetic")
        out.append({"key": f"{i:09d}_000", "class": i % 3, "identity": i, "variant": 0, "image": img,
                    "full": img if full else None, "meta": {"det_prob": 0.5 + i / 10, "attr_x": f"v{i}"}})  # fmt: skip
    return out


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_notice_reads_back(fmt: str) -> None:
    data = encode_with_notice(np.zeros((8, 8, 3), np.uint8), fmt, 90, "Synthetic image of nobody")
    notice = read_notice(data)
    assert notice == {"description": "Synthetic image of nobody", "digital_source_type": TRAINED_ALGORITHMIC_MEDIA}


def test_webdataset_round_trip_is_deterministic(tmp_path: Path) -> None:
    writer = WRITERS.create("webdataset")
    data = samples(full=True)
    writer.write(tmp_path / "a.tar", data, LAYOUT)
    writer.write(tmp_path / "b.tar", data, LAYOUT)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    got = list(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False))
    assert [s["__key__"] for s in got] == [s["key"] for s in data]
    assert [int(s["cls"]) for s in got] == [s["class"] for s in data]
    assert [s["jpg"] for s in got] == [s["image"] for s in data]
    assert [s["full.jpg"] for s in got] == [s["image"] for s in data]
    assert json.loads(got[2]["json"]) == data[2]["meta"]
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    assert all(m.isfile() and m.mtime == 0 and not m.name.startswith("/") and ".." not in m.name for m in members)


def test_parquet_round_trip_with_hf_features(tmp_path: Path) -> None:
    data = samples()
    WRITERS.create("parquet").write(tmp_path / "a.parquet", data, LAYOUT)
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.column("key").to_pylist() == [s["key"] for s in data]
    assert table.column("class").to_pylist() == [s["class"] for s in data]
    images = table.column("image").to_pylist()
    assert [im["bytes"] for im in images] == [s["image"] for s in data]
    assert images[0]["path"] == "000000000_000.jpg"
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"} and features["attr_x"] == {"dtype": "string", "_type": "Value"}
    Image.open(io.BytesIO(images[0]["bytes"])).verify()


def test_partition_respects_count_and_bytes() -> None:
    assert partition([1] * 10, 4, 100) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert partition([60, 60, 60], 10, 100) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert partition([500], 10, 100) == [slice(0, 1)]  # one oversized sample still gets a shard
    assert partition([], 10, 100) == []


@pytest.mark.parametrize("fmt", ["webdataset", "imagefolder"])
@pytest.mark.parametrize("key", ["../evil", "/abs/path", "a.b", "a/b", "", "x" * 200, "nul\x00"])
def test_unsafe_keys_never_reach_a_file_name(tmp_path: Path, key: str, fmt: str) -> None:
    data = samples(1)
    data[0]["key"] = key
    with pytest.raises(ValueError, match="unsafe sample key"):
        WRITERS.create(fmt).write(tmp_path / "out" / "a", data, LAYOUT)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_writers_report_the_sha256_and_size_of_what_they_wrote(tmp_path: Path, fmt: str) -> None:
    import hashlib

    writer = WRITERS.create(fmt)
    path = tmp_path / f"a{writer.suffix}"
    written = writer.write(path, samples(full=True), LAYOUT)
    assert written == {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}


def test_tar_members_have_no_pax_header(tmp_path: Path) -> None:
    """Each member is one 512-byte header plus its padded data: no PAX extension record per member."""
    data = samples()
    WRITERS.create("webdataset").write(tmp_path / "a.tar", data, LAYOUT)
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    assert all(not m.pax_headers for m in members)
    payload = sum(512 + -(-m.size // 512) * 512 for m in members)
    assert (tmp_path / "a.tar").stat().st_size == -(-(payload + 1024) // 10240) * 10240  # end blocks, record size


def test_dvc_links_cached_files_instead_of_copying() -> None:
    import configparser

    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[1] / ".dvc" / "config")
    assert config.get("cache", "type").split(",")[:2] == ["reflink", "hardlink"]
