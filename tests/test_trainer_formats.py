"""Every export format read back by the library its trainer reads it with: MXNet's own RecordIO reader (as
arcface_torch, CVLFace and AdaFace's converter use it), LMDB + msgpack as Vec2Face's trainer opens it,
torchvision's ImageFolder, wids' ShardListDataset, Hugging Face `datasets`; each gives the keys, labels and
image bytes of metadata.parquet. Then a few ArcFace steps from RecordIO and from WebDataset."""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.loader import make_loader, shard_urls
from pipeline.shards.layout import Layout
from pipeline.shards.recordio import MAGIC, RecordIOWriter, frame


@pytest.fixture(scope="module")
def recordio():
    """mx-recordio (Apache MXNet's recordio module on its own) over libmxnet.so from the mxnet wheel: MXNet's
    C++ reader and writer, without importing mxnet's Python package (that needs numpy < 2)."""
    spec = importlib.util.find_spec("mxnet")
    assert spec is not None and spec.submodule_search_locations, "the dev group installs mxnet for its library"
    os.environ["MXNET_LIBRARY_PATH"] = str(Path(spec.submodule_search_locations[0]) / "libmxnet.so")
    from mx_recordio import recordio as module

    return module


@pytest.fixture(scope="module")
def truth(exported_dataset: Path) -> tuple[list[str], list[int], dict[str, bytes]]:
    """Keys and classes of metadata.parquet (key order) and each key's image bytes from the WebDataset tars."""
    meta = pq.read_table(exported_dataset / "metadata.parquet", columns=["key", "class"])
    images = {s["__key__"]: s["jpg"] for s in wds.WebDataset(shard_urls(exported_dataset), shardshuffle=False)}
    return meta.column("key").to_pylist(), meta.column("class").to_pylist(), images


def label_of(header) -> int:
    return int(header.label if np.isscalar(header.label) else header.label[0])


def test_recordio_reads_back_as_insightface_datasets_do(exported_dataset: Path, truth, recordio) -> None:
    keys, classes, images = truth
    folder = exported_dataset / "recordio"
    rec = recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "r")
    header, _ = recordio.unpack(rec.read_idx(0))
    assert header.flag > 0  # arcface_torch / CVLFace: images are records 1 .. label[0] - 1
    first_identity, end = int(header.label[0]), int(header.label[1])
    image_ids = list(range(1, first_identity))
    assert len(image_ids) == len(keys) and end - first_identity == len(set(classes)) == max(classes) + 1
    for index, key, cls in zip(image_ids, keys, classes, strict=True):
        record, data = recordio.unpack(rec.read_idx(index))
        assert (label_of(record), record.id, data) == (cls, index, images[key])
    for cls in range(end - first_identity):  # identity records: [first, end) of the class's image records
        record, _ = recordio.unpack(rec.read_idx(first_identity + cls))
        lo, hi = int(record.label[0]), int(record.label[1])
        assert classes[lo - 1 : hi - 1] == [cls] * (hi - lo) and hi > lo
    rec.close()
    sequential = recordio.MXRecordIO(str(folder / "train.rec"), "r")
    count = 0
    while sequential.read() is not None:
        count += 1
    assert count == end
    height, width = Image.open(io.BytesIO(images[keys[0]])).size[::-1]
    assert (folder / "property").read_text() == f"{max(classes) + 1},{height},{width}\n"


def test_recordio_side_files_for_cvlface(exported_dataset: Path, truth) -> None:
    import pandas as pd

    keys, classes, _ = truth
    folder = exported_dataset / "recordio"
    info = pd.read_csv(folder / "train.tsv", sep="\t", header=None)  # as CVLFace's MXFaceDataset reads it
    info.columns = ["_idx", "path", "label"]
    assert info["_idx"].tolist() == list(range(1, len(keys) + 1)) and info["label"].tolist() == classes
    assert info["path"].tolist() == [f"{c}/{i}.jpg" for i, c in enumerate(classes, 1)]
    config = yaml.safe_load((folder / "cvlface.yaml").read_text())
    assert (config["num_classes"], config["num_image"], config["color_space"]) == (max(classes) + 1, len(keys), "RGB")


def test_lmdb_reads_back_as_vec2face_trainer_does(exported_dataset: Path, truth) -> None:
    import lmdb
    import msgpack

    keys, classes, images = truth
    path = exported_dataset / "lmdb" / "train.lmdb"
    env = lmdb.open(str(path), subdir=os.path.isdir(path), readonly=True, lock=False, readahead=False, meminit=False)
    with env.begin(write=False) as txn:
        length = msgpack.loads(txn.get(b"__len__"))
        stored_keys = msgpack.loads(txn.get(b"__keys__"))
        classnum = msgpack.loads(txn.get(b"__classnum__"))
        records = [msgpack.loads(txn.get(k)) for k in stored_keys]
    env.close()
    assert (length, classnum) == (len(keys), max(classes) + 1)
    assert stored_keys == [k.encode() for k in keys]
    assert [(bytes(img), label) for img, label in records] == [
        (images[k], c) for k, c in zip(keys, classes, strict=True)
    ]


def test_imagefolder_reads_back_with_torchvision(exported_dataset: Path, truth) -> None:
    from torchvision.datasets import ImageFolder

    keys, classes, images = truth
    ds = ImageFolder(str(exported_dataset / "imagefolder"))
    assert [ds.class_to_idx[name] for name in ds.classes] == [int(name) for name in ds.classes]
    assert len(ds.classes) == max(classes) + 1
    labels = dict(zip(keys, classes, strict=True))
    assert sorted(Path(p).stem for p, _ in ds.samples) == keys
    for path, target in ds.samples:
        assert target == labels[Path(path).stem] and Path(path).read_bytes() == images[Path(path).stem]
    image, target = ds[0]
    assert image.size == (112, 112) and target == ds.samples[0][1]


def test_wids_index_reads_back(exported_dataset: Path, truth, tmp_path: Path) -> None:
    import wids

    keys, classes, images = truth
    ds = wids.ShardListDataset(str(exported_dataset / "webdataset" / "train.wids.json"), cache_dir=str(tmp_path),
                               transformations=[lambda s: s])  # fmt: skip
    assert len(ds) == len(keys)
    got = {ds[i]["__key__"]: ds[i] for i in range(len(ds))}
    assert set(got) == set(keys)
    for key, cls in zip(keys, classes, strict=True):
        assert int(got[key][".cls"].read()) == cls and got[key][".jpg"].read() == images[key]
    info = (exported_dataset / "webdataset" / "dataset_info.txt").read_text().splitlines()
    assert int(info[0].split(" ")[0].split(":")[1]) == max(classes) + 1  # as Vec2Face's WebDataLoader parses it


def test_parquet_class_is_a_classlabel_named_like_the_folders(exported_dataset: Path, truth) -> None:
    datasets = pytest.importorskip("datasets")
    keys, classes, _ = truth
    files = sorted(str(p) for p in (exported_dataset / "parquet").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    feature = ds.features["class"]
    assert isinstance(feature, datasets.ClassLabel) and feature.num_classes == max(classes) + 1
    assert feature.names == sorted(p.name for p in (exported_dataset / "imagefolder").iterdir() if p.is_dir())
    assert dict(zip(ds["key"], ds["class"], strict=True)) == dict(zip(keys, classes, strict=True))


def test_classlabel_gives_way_to_a_plain_int_past_the_limit(monkeypatch) -> None:
    from pipeline.shards import writers

    monkeypatch.setattr(writers, "CLASS_LABEL_MAX", 2)
    assert writers.class_feature(Layout(classes=3, samples=6, image_ext="jpg")) == {"dtype": "int64", "_type": "Value"}
    assert writers.class_feature(Layout(classes=2, samples=6, image_ext="jpg"))["names"] == ["0", "1"]
    assert Layout(classes=1000, samples=1, image_ext="jpg").class_name(7) == "007"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([MAGIC, b"\0", b"ab", b"xyz", b"\x0a\x23", b"\xd7\xce"]), max_size=12),
                min_size=1, max_size=6))  # fmt: skip
def test_framing_is_byte_identical_to_mxnets_writer(recordio, tmp_path_factory, records: list[list[bytes]]) -> None:
    """Payloads holding the magic word at aligned and unaligned offsets: our framing equals MXNet's writer byte
    for byte, and MXNet's reader returns every payload."""
    payloads = [b"".join(parts) for parts in records]
    path = tmp_path_factory.mktemp("rec") / "x.rec"
    writer = recordio.MXRecordIO(str(path), "w")
    for payload in payloads:
        writer.write(payload)
    writer.close()
    assert path.read_bytes() == b"".join(frame(p) for p in payloads)
    path.write_bytes(b"".join(frame(p) for p in payloads))
    reader = recordio.MXRecordIO(str(path), "r")
    assert [reader.read() for _ in payloads] == payloads and reader.read() is None


def test_recordio_writer_escapes_the_magic_inside_images(recordio, tmp_path: Path) -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4)).save(jpeg, "JPEG")
    images = [jpeg.getvalue() + MAGIC * 3, MAGIC + jpeg.getvalue()[:7] + MAGIC, jpeg.getvalue()]
    samples = [
        {"key": f"{i:09d}_000", "class": c, "image": img}
        for i, (c, img) in enumerate(zip([0, 0, 1], images, strict=True))
    ]
    RecordIOWriter().write_all(tmp_path, [samples[:2], samples[2:]], Layout(classes=2, samples=3, image_ext="jpg"), 0)
    rec = recordio.MXIndexedRecordIO(str(tmp_path / "recordio/train.idx"), str(tmp_path / "recordio/train.rec"), "r")
    got = [recordio.unpack(rec.read_idx(i)) for i in (1, 2, 3)]
    assert [(label_of(h), data) for h, data in got] == [(0, images[0]), (0, images[1]), (1, images[2])]


def test_recordio_refuses_more_records_than_float32_labels_count(tmp_path: Path) -> None:
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="exceed 2\\^24"):
        RecordIOWriter().write_all(tmp_path, [], Layout(classes=10, samples=1 << 24, image_ext="jpg"), 0)
    assert not (tmp_path / "recordio").exists()


def test_a_failing_dataset_writer_leaves_nothing_behind(tmp_path: Path) -> None:
    from pipeline.errors import PipelineError
    from pipeline.shards.lmdb_store import LMDBWriter

    samples = [{"key": k, "class": 0, "image": b"x"} for k in ("000000001_000", "000000000_000")]  # out of order
    with pytest.raises(PipelineError, match="out of order"):
        LMDBWriter().write_all(tmp_path, [samples], Layout(classes=1, samples=2, image_ext="jpg"), 2)
    assert [p.name for p in (tmp_path / "lmdb").iterdir()] == []


def test_export_removes_the_folders_of_formats_no_longer_asked_for(exported_dataset: Path, tmp_path: Path) -> None:
    import shutil

    from pipeline.cli import main
    from pipeline.export.run import run_export

    from .conftest import EXPORTED, small_params

    root, out = exported_dataset.parent, tmp_path / "dataset"
    shutil.copytree(exported_dataset, out)
    params = small_params(**{**EXPORTED, "export": {**EXPORTED["export"], "formats": ["webdataset"]}})
    run_export(params, root / "candidates", root / "selection.parquet", out)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["webdataset"]
    assert main(["verify", str(out)]) == 0


def test_card_names_every_format_and_its_reader(exported_dataset: Path) -> None:
    card = (exported_dataset / "README.md").read_text()
    for folder, reader in [
        ("webdataset", "wids.ShardListDataset"),
        ("parquet", "datasets.load_dataset"),
        ("recordio", "arcface_torch"),
        ("imagefolder", "ImageFolder"),
        ("lmdb", "Vec2Face"),
    ]:
        assert f"| `{folder}/` |" in card and reader in card, folder


def test_card_names_the_cvlface_link_by_the_dataset_name(exported_dataset: Path) -> None:
    """CVLFace reads $DATA_ROOT/<rec of cvlface.yaml> (run with its own get_train_dataset: docs/formats.md):
    rec is dataset.name, and the card's link command uses it."""
    from .conftest import EXPORTED, small_params

    rec = yaml.safe_load((exported_dataset / "recordio" / "cvlface.yaml").read_text())["rec"]
    assert rec == small_params(**EXPORTED).dataset.name
    assert f'`ln -s "$PWD/recordio" "$DATA_ROOT/{rec}"`' in (exported_dataset / "README.md").read_text()


def test_card_says_which_scores_were_not_computed_or_tell_nothing() -> None:
    """No `nan` row for an unscored q_disc; a score constant over the kept samples (SER-FIQ on the random
    embedder) is named with its reason."""
    from pipeline.report.card import render_card

    nan = float("nan")
    info = {
        "name": "t", "generator": {"model": "smoke", "label": "smoke", "license": "x", "sha256": "0" * 64},
        "embedder_weights": "none", "counts": {"identities": 1, "images_per_identity": 1, "samples": 1,
        "candidates": 1}, "reasons": {}, "attributes": {}, "similarity": None, "formats": [], "format_notes": [],
        "shards": 1, "code_version": "v",
        "params": {"generator": {"truncation_psi": 0.7}, "seed": 0,
                   "dedup": {"max_identity_similarity": 0.5, "min_recall": 0.99}},
        "quality": {"q_disc": (nan, nan, nan), "q_serfiq": (0.3891, 0.3893, 0.3894), "q_sharpness": (7.1, 10.7, 16.1)},
    }  # fmt: skip
    card = render_card(info | {"name": "my-set", "formats": ["recordio"]})
    assert '`ln -s "$PWD/recordio" "$DATA_ROOT/my-set"`' in card
    assert "nan" not in card and "| q_disc | not scored (`generator.disc_score: false`" in card
    assert "> `q_serfiq`: about the same value for every kept sample (`q_serfiq`: SER-FIQ with the random" in card
    assert "q_sharpness`" not in card  # it varies: not named


def arcface_losses(batches: list[tuple[torch.Tensor, torch.Tensor]], classes: int, steps: int = 40) -> list[float]:
    """ArcFace (pytorch-metric-learning) on a small CNN, cycling over the batches."""
    from pytorch_metric_learning.losses import ArcFaceLoss

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(128, 32))  # fmt: skip
    loss_fn = ArcFaceLoss(num_classes=classes, embedding_size=32)
    opt = torch.optim.Adam([*net.parameters(), *loss_fn.parameters()], lr=1e-2)
    losses = []
    for step in range(steps):
        images, labels = batches[step % len(batches)]
        loss = loss_fn(net(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def normalise(image: Image.Image) -> torch.Tensor:
    """arcface_torch's transform: RGB, ToTensor, Normalize(0.5, 0.5)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def test_arcface_trains_from_recordio_and_webdataset(exported_dataset: Path, recordio) -> None:
    folder = exported_dataset / "recordio"
    rec = recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "r")
    header, _ = recordio.unpack(rec.read_idx(0))
    samples = [recordio.unpack(rec.read_idx(i)) for i in range(1, int(header.label[0]))]
    images = torch.stack([normalise(Image.open(io.BytesIO(data))) for _, data in samples])
    labels = torch.tensor([label_of(h) for h, _ in samples])
    classes = int(header.label[1] - header.label[0])
    from_rec = arcface_losses([(images, labels)], classes)
    from_wds = arcface_losses([(x * 2 - 1, torch.as_tensor(y)) for x, y in make_loader(exported_dataset, 6, 0, 0)],
                              classes)  # fmt: skip
    for losses in (from_rec, from_wds):
        assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
