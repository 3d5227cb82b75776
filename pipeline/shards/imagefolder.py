"""`imagefolder/<class>/<key>.<ext>`: one folder per class, named by its zero-padded id so that torchvision's
`ImageFolder` (which numbers folders in name order) gives our class ids. Each output shard also writes a
sha256sum listing, `imagefolder/train-NNNNNN.sha256`, of the images it wrote: the manifest hashes the
listings, `synthfaces verify` (or `sha256sum -c`) checks the images against them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from pipeline.shards.io import listing_bytes, write_bytes_atomic
from pipeline.shards.layout import Layout, ShardFormat, check_key


class ImageFolderWriter(ShardFormat):
    folder = "imagefolder"
    suffix = ".sha256"
    files = "`<class>/<key>.jpg` (class folders zero-padded), `train-NNNNNN.sha256` listings"
    reader = '`torchvision.datasets.ImageFolder("imagefolder")`, insightface arcface_torch, AdaFace (as `imgs/`)'

    def write(self, path: Path, samples: list[dict[str, Any]], layout: Layout) -> dict[str, Any]:
        """Write the shard's images (temporary name, then rename), then its listing, last."""
        root = path.parent
        made: set[str] = set()
        lines = []
        for s in samples:
            folder = layout.class_name(s["class"])
            relative = f"{folder}/{check_key(s['key'])}.{layout.image_ext}"
            if folder not in made:
                (root / folder).mkdir(parents=True, exist_ok=True)  # other shards share class folders
                made.add(folder)
            target = root / relative
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            tmp.write_bytes(s["image"])
            os.replace(tmp, target)
            lines.append((relative, hashlib.sha256(s["image"]).hexdigest()))
        return {**write_bytes_atomic(path, listing_bytes(lines)), "listing": True}
