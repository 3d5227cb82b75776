"""Contact sheets: identities as rows, their samples as columns (what a person looks at first)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[bytes]]], cell: int = 96, columns: int | None = None
) -> Image.Image:
    """rows: (label, encoded images); one row per label, images scaled to `cell` px, label on the left."""
    columns = columns or max((len(images) for _, images in rows), default=1)
    label_w = 120
    sheet = Image.new("RGB", (label_w + columns * cell, max(1, len(rows)) * cell), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        draw.text((6, r * cell + cell // 2 - 6), label, fill=(230, 230, 230))
        for c, data in enumerate(images[:columns]):
            tile = Image.open(io.BytesIO(data)).convert("RGB").resize((cell, cell), Image.BILINEAR)
            sheet.paste(tile, (label_w + c * cell, r * cell))
    return sheet


def sheet_bytes(image: Image.Image, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def dataset_rows(metadata_keys: np.ndarray, classes: np.ndarray, images: dict[str, bytes], n_rows: int) -> list:
    """The first `n_rows` classes of a dataset with all their samples, in key order."""
    rows = []
    for cls in sorted(set(classes.tolist()))[:n_rows]:
        keys = sorted(k for k, c in zip(metadata_keys, classes, strict=True) if c == cls)
        rows.append((f"class {cls}", [images[k] for k in keys if k in images]))
    return rows


def rejected_rows(curation: pd.DataFrame, images: dict[str, bytes], per_reason: int = 8) -> list:
    """Up to `per_reason` rejected candidates per reason code (lowest keys first), one row per reason."""
    rejected = curation[~curation["keep"]].sort_values("key")
    rows = []
    for reason, group in rejected.groupby("reason", sort=True):
        keys = group["key"].tolist()[:per_reason]
        rows.append((str(reason), [images[k] for k in keys if k in images]))
    return rows
