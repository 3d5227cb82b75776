"""Stream an exported dataset into PyTorch: WebDataset shards -> (aligned image tensor, class id) batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def _to_tensor(image: object) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def shard_urls(dataset_dir: str | Path) -> list[str]:
    """The WebDataset shards of an exported dataset, in order."""
    urls = sorted(str(p) for p in (Path(dataset_dir) / "webdataset").glob("train-*.tar"))
    if not urls:
        raise FileNotFoundError(f"no webdataset/train-*.tar under {dataset_dir}: export the dataset first (dvc repro)")
    return urls


def make_dataset(urls: Sequence[str], shuffle: int = 1000, seed: int = 0, with_keys: bool = False):
    """A WebDataset of (image [3, H, W] float in [0, 1], class id) — plus the key when `with_keys`."""
    import webdataset as wds

    ds = wds.WebDataset(list(urls), shardshuffle=len(urls) if shuffle else False, seed=seed, empty_check=False)
    if shuffle:
        ds = ds.shuffle(shuffle, seed=seed)
    ds = ds.decode("pil").map(lambda s: {**s, "img": _to_tensor(s.get("jpg") or s.get("png") or s.get("webp"))})
    fields = ("img", "cls", "__key__") if with_keys else ("img", "cls")
    return ds.to_tuple(*fields).map_tuple(lambda x: x, lambda c: int(c))


def make_loader(
    urls: Sequence[str] | str | Path,
    batch_size: int = 64,
    shuffle: int = 1000,
    workers: int = 2,
    seed: int = 0,
):
    """A DataLoader of (images [B, 3, H, W], classes [B]) over the shards (or a dataset folder)."""
    import webdataset as wds

    if isinstance(urls, str | Path):
        urls = shard_urls(urls)
    workers = min(workers, len(urls))
    ds = make_dataset(urls, shuffle, seed).batched(batch_size, partial=True)
    return wds.WebLoader(ds, batch_size=None, num_workers=workers)
