"""MXNet RecordIO in the layout of insightface's face datasets (what arcface_torch, AdaFace's converter and
CVLFace read), written without mxnet:

- `train.rec`: record 0 a header (flag 2, label [N+1, N+1+C]); records 1..N one image each (IRHeader flag 0,
  label = class, id = record index) in class order; records N+1..N+C one per class (flag 2, label
  [first, end) of its image records);
- `train.idx`: `index<TAB>byte offset` per record; `property`: `classes,height,width`;
- `train.tsv` (CVLFace): `index<TAB>class/index.<ext><TAB>class` per image record;
- `cvlface.yaml`: CVLFace's dataset config (num_classes, num_image, color_space).

Framing follows dmlc-core's RecordIOWriter: magic, then a length word whose top 3 bits say whether the
part is whole (0) or the start/middle/end (1/2/3) of a payload that held the magic at an aligned offset,
payloads padded to 4 bytes.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.errors import PipelineError
from pipeline.shards.io import hashed_atomic, write_bytes_atomic
from pipeline.shards.layout import DatasetFormat, Layout, entry

MAGIC = struct.pack("<I", 0xCED7230A)
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: mxnet.recordio.IRHeader
MAX_RECORD = (1 << 29) - 1
FLUSH_LINES = 4096


def frame(payload: bytes) -> bytes:
    """One record as it lies in a .rec file: the payload split at every 4-byte aligned copy of the magic
    (which the reader puts back), each part behind magic + length word, zero-padded to 4 bytes."""
    if len(payload) > MAX_RECORD:
        raise PipelineError(f"a RecordIO record holds at most {MAX_RECORD} bytes, got {len(payload)}")
    parts, start = [], 0
    hit = payload.find(MAGIC)
    while hit != -1 and hit + 4 <= len(payload) - len(payload) % 4:
        if hit % 4:
            hit = payload.find(MAGIC, hit + 1)
            continue
        parts += [MAGIC, struct.pack("<I", (1 if start == 0 else 2) << 29 | (hit - start)), payload[start:hit]]
        start = hit + 4
        hit = payload.find(MAGIC, start)
    tail = len(payload) - start
    parts += [MAGIC, struct.pack("<I", (3 if start else 0) << 29 | tail), payload[start:], b"\0" * (-tail % 4)]
    return b"".join(parts)


def pack(label: float | tuple[float, ...], index: int, data: bytes = b"") -> bytes:
    """A record's payload as mxnet.recordio.pack makes it: a scalar label in the header (flag 0), or a tuple
    of float32 labels after it (flag = their count)."""
    if isinstance(label, tuple):
        return IR_HEADER.pack(len(label), 0.0, index, 0) + np.asarray(label, "<f4").tobytes() + data
    return IR_HEADER.pack(0, label, index, 0) + data


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) of an encoded image, from its header."""
    from PIL import Image

    width, height = Image.open(io.BytesIO(data)).size
    return height, width


class RecordIOWriter(DatasetFormat):
    folder = "recordio"
    files = "`train.rec`, `train.idx`, `property`, `train.tsv`, `cvlface.yaml` (insightface layout, RGB JPEG)"
    reader = "insightface arcface_torch (`MXFaceDataset`), AdaFace (`--use_mxrecord`), CVLFace (as `$DATA_ROOT/<rec>`)"

    def write_all(
        self, out_dir: Path, batches: Iterable[list[dict[str, Any]]], layout: Layout, image_bytes: int
    ) -> list[dict[str, Any]]:
        n, classes = layout.samples, layout.classes
        if n + classes + 1 >= 1 << 24:
            raise PipelineError(f"recordio labels are float32: {n:,} samples and {classes:,} classes exceed 2^24")
        folder = out_dir / self.folder
        offsets = np.zeros(n + classes + 1, np.int64)
        first = np.full(classes, -1, np.int64)
        end = np.zeros(classes, np.int64)
        size = (0, 0)
        with ExitStack() as stack:
            rec = stack.enter_context(hashed_atomic(folder / "train.rec"))
            tsv = stack.enter_context(hashed_atomic(folder / "train.tsv"))

            def put(index: int, payload: bytes) -> None:
                offsets[index] = rec.size
                rec.write(frame(payload))

            put(0, pack((n + 1.0, n + 1.0 + classes), 0))
            index, previous, lines = 0, -1, []
            for batch in batches:
                for s in batch:
                    index, cls = index + 1, int(s["class"])
                    if cls < previous or not 0 <= cls < classes or index > n:
                        raise PipelineError(f"recordio: sample {s['key']} (class {cls}, #{index}) breaks the class "
                                            f"order or the counts ({n} samples, {classes} classes)")  # fmt: skip
                    if cls != previous:
                        first[cls], previous = index, cls
                    if index == 1:
                        size = image_size(s["image"])
                    end[cls] = index + 1
                    put(index, pack(float(cls), index, s["image"]))
                    lines.append(f"{index}\t{cls}/{index}.{layout.image_ext}\t{cls}\n")
                    if len(lines) >= FLUSH_LINES:
                        tsv.write("".join(lines).encode())
                        lines.clear()
            tsv.write("".join(lines).encode())
            if index != n or (first < 0).any():
                raise PipelineError(f"recordio: got {index} samples in {int((first >= 0).sum())} classes, "
                                    f"expected {n} in {classes}")  # fmt: skip
            for cls in range(classes):
                put(n + 1 + cls, pack((float(first[cls]), float(end[cls])), n + 1 + cls))
        entries = [entry(f"{self.folder}/train.rec", n, {"sha256": rec.sha256, "bytes": rec.size}),
                   entry(f"{self.folder}/train.tsv", n, {"sha256": tsv.sha256, "bytes": tsv.size})]  # fmt: skip
        with hashed_atomic(folder / "train.idx") as idx:
            for lo in range(0, len(offsets), FLUSH_LINES):
                chunk = offsets[lo : lo + FLUSH_LINES].tolist()
                idx.write("".join(f"{lo + i}\t{o}\n" for i, o in enumerate(chunk)).encode())
        entries.append(entry(f"{self.folder}/train.idx", n, {"sha256": idx.sha256, "bytes": idx.size}))
        height, width = size
        written = write_bytes_atomic(folder / "property", f"{classes},{height},{width}\n".encode())
        entries.append(entry(f"{self.folder}/property", None, written))
        config = {"data_root": "${oc.env:DATA_ROOT}", "rec": layout.name, "color_space": "RGB",
                  "num_classes": classes, "num_image": n, "repeated_sampling_cfg": None,
                  "semi_sampling_cfg": None}  # fmt: skip
        written = write_bytes_atomic(folder / "cvlface.yaml", yaml.safe_dump(config, sort_keys=False).encode())
        entries.append(entry(f"{self.folder}/cvlface.yaml", None, written))
        return entries
