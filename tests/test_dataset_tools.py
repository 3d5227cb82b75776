"""What users do with an exported dataset: stream it into PyTorch, open it with Hugging Face `datasets`,
and inspect / verify / preview it with the `synthfaces` command."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.loader import make_dataset, make_loader, shard_urls


def labels(dataset: Path) -> dict[str, int]:
    meta = pq.read_table(dataset / "metadata.parquet", columns=["key", "class"])
    return dict(zip(meta.column("key").to_pylist(), meta.column("class").to_pylist(), strict=True))


def test_loader_yields_the_right_labels(exported_dataset: Path) -> None:
    seen = {key: cls for _, cls, key in make_dataset(shard_urls(exported_dataset), shuffle=0, with_keys=True)}
    assert seen == labels(exported_dataset)
    batches = list(make_loader(exported_dataset, batch_size=4, workers=0))
    images = torch.cat([b[0] for b in batches])
    assert images.shape == (6, 3, 112, 112) and images.min() >= 0 and images.max() <= 1
    assert sorted(torch.cat([torch.as_tensor(b[1]) for b in batches]).tolist()) == sorted(
        labels(exported_dataset).values()
    )


def test_huggingface_datasets_reads_the_parquet_shards(exported_dataset: Path) -> None:
    datasets = pytest.importorskip("datasets")
    files = sorted(str(p) for p in (exported_dataset / "parquet").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert isinstance(ds.features["image"], datasets.Image)
    row = ds[0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (112, 112)
    assert {"key", "class", "identity", "det_prob", "q_sharpness", "attr_smoke_hair"} <= set(row)
    assert dict(zip(ds["key"], ds["class"], strict=True)) == labels(exported_dataset)


def test_verify_passes_then_catches_a_flipped_byte(exported_dataset: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(exported_dataset, copy)
    assert main(["verify", str(copy)]) == 0
    shard = sorted((copy / "webdataset").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0x01
    shard.write_bytes(bytes(data))
    assert main(["verify", str(copy)]) == 1
    assert f"sha256    webdataset/{shard.name}" in capsys.readouterr().out
    (copy / "extra.bin").write_bytes(b"x")
    assert main(["verify", str(copy)]) == 1


def test_inspect_and_preview(exported_dataset: Path, tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(exported_dataset)]) == 0
    out = capsys.readouterr().out
    assert "classes (identities)  3" in out and "smoke-test generator" in out and "attr_smoke_hair" in out
    sheet = tmp_path / "sheet.jpg"
    assert main(["preview", str(exported_dataset), "--rows", "2", "--out", str(sheet)]) == 0
    image = Image.open(io.BytesIO(sheet.read_bytes()))
    assert image.size == (120 + 2 * 96, 2 * 96)  # label column + 2 samples per row, 2 identities


def test_missing_dataset_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "manifest.json not found" in err[0]


def test_manifest_lists_every_file_with_sha256(exported_dataset: Path) -> None:
    """Every file is in the manifest with its sha256, or named with its sha256 by a listing that is."""
    import hashlib

    from pipeline.shards.io import read_listing

    manifest = json.loads((exported_dataset / "manifest.json").read_text())
    digests = {f["path"]: f["sha256"] for f in manifest["files"]}
    for f in [f for f in manifest["files"] if f.get("listing")]:
        base = Path(f["path"]).parent
        digests |= {(base / rel).as_posix(): d for d, rel in read_listing(exported_dataset / f["path"])}
    on_disk = {p.relative_to(exported_dataset).as_posix() for p in exported_dataset.rglob("*") if p.is_file()}
    assert on_disk - set(digests) == {"manifest.json"} and set(digests) <= on_disk
    assert all(hashlib.sha256((exported_dataset / p).read_bytes()).hexdigest() == d for p, d in digests.items())
    formats = {p.split("/")[0] for p in digests if "/" in p}
    assert formats == {"webdataset", "parquet", "recordio", "imagefolder", "lmdb"}


@pytest.mark.parametrize(
    "victim", ["recordio/train.rec", "recordio/train.idx", "lmdb/train.lmdb", "imagefolder/1/000000001_000.jpg",
               "webdataset/train.wids.json"],
)  # fmt: skip
def test_verify_checks_every_format(exported_dataset: Path, tmp_path: Path, capsys, victim: str) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(exported_dataset, copy)
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / victim).write_bytes(bytes(data))
    assert main(["verify", str(copy)]) == 1
    assert f"sha256    {victim}: content differs" in capsys.readouterr().out
    (copy / victim).unlink()
    assert main(["verify", str(copy)]) == 1
    assert f"missing   {victim}" in capsys.readouterr().out


def test_every_exported_image_carries_the_synthetic_notice(exported_dataset: Path) -> None:
    """Read back from the dataset as a trainer would: every tar member image and every Parquet image cell."""
    import webdataset as wds

    from pipeline.shards.notice import TRAINED_ALGORITHMIC_MEDIA, read_notice

    images = [s["jpg"] for s in wds.WebDataset(shard_urls(exported_dataset), shardshuffle=False)]
    for shard in sorted((exported_dataset / "parquet").glob("train-*.parquet")):
        images += [cell["bytes"] for cell in pq.read_table(shard, columns=["image"]).column("image").to_pylist()]
    assert len(images) == 2 * len(labels(exported_dataset)) == 12
    for data in images:
        notice = read_notice(data)
        assert notice["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
        assert "synthetic" in (notice["description"] or "").lower()


def test_sample_json_is_strict_json(exported_dataset: Path) -> None:
    """KEY.json holds no NaN (not JSON): an unscored q_disc (no discriminator) is written as null."""
    import tarfile

    def refuse(name: str) -> None:
        raise ValueError(f"non-JSON constant {name}")

    seen = 0
    for tar_path in sorted((exported_dataset / "webdataset").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read(), parse_constant=refuse)  # type: ignore[union-attr]
                    assert meta["q_disc"] is None
                    seen += 1
    assert seen == 6
