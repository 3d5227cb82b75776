"""Image encoding for candidate shards, off the device's critical path.

A JPEG encoder registers by name (`runtime.jpeg_encoder`): `pillow` encodes on CPU worker
threads while the device computes the next batch; `nvjpeg` encodes on the GPU (torchvision's
CUDA JPEG encoder), so only compressed bytes cross the bus. Aligned crops are small PNGs
(lossless: what is stored is what was embedded) and are always encoded on the CPU workers.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image

from pipeline.registry import Registry

#: JPEG quality of the full candidate image (4:4:4 chroma at 90 and above).
FULL_IMAGE_QUALITY = 95

T = TypeVar("T")
R = TypeVar("R")


def encode(array: np.ndarray, fmt: str, quality: int = FULL_IMAGE_QUALITY) -> bytes:
    """HWC uint8 -> encoded bytes (deterministic for a given Pillow build)."""
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(array).save(buf, format="PNG", compress_level=6)
    elif fmt == "jpg":
        Image.fromarray(array).save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    elif fmt == "webp":
        Image.fromarray(array).save(buf, format="WEBP", quality=quality, method=4)
    else:
        raise ValueError(f"unknown image format {fmt!r} (jpg, png, webp)")
    return buf.getvalue()


class JpegEncoder(Protocol):
    #: True: called in the device loop with pixels on the device; False: on a CPU worker with host pixels.
    device_side: bool

    def __call__(self, pixels: Any) -> list[bytes]:
        """[B, H, W, 3] uint8 (a device tensor, or a host array) -> one JPEG per image."""
        ...


class PillowJpeg:
    """libjpeg through Pillow, on the CPU worker threads (Pillow releases the GIL while it encodes)."""

    device_side = False

    def __init__(self, quality: int = FULL_IMAGE_QUALITY, **_: Any):
        self.quality = quality

    def __call__(self, pixels: np.ndarray) -> list[bytes]:
        return [encode(a, "jpg", self.quality) for a in pixels]


class CudaJpeg:
    """nvJPEG through `torchvision.io.encode_jpeg` on a list of CUDA tensors (one batched call)."""

    device_side = True

    def __init__(self, quality: int = FULL_IMAGE_QUALITY, device: torch.device | None = None, **_: Any):
        if device is None or device.type != "cuda":
            from pipeline.errors import ConfigError

            raise ConfigError([f"runtime.jpeg_encoder: nvjpeg needs a CUDA device, got {device} (use auto or pillow)"])
        from torchvision.io import encode_jpeg

        self.quality, self._encode = quality, encode_jpeg

    def __call__(self, pixels: torch.Tensor) -> list[bytes]:
        chw = [img.contiguous() for img in pixels.permute(0, 3, 1, 2)]
        return [t.cpu().numpy().tobytes() for t in self._encode(chw, quality=self.quality)]


JPEG_ENCODERS: Registry[JpegEncoder] = Registry("jpeg encoder")
JPEG_ENCODERS.register("pillow")(PillowJpeg)
JPEG_ENCODERS.register("nvjpeg")(CudaJpeg)


def resolve_jpeg_encoder(name: str, device: torch.device) -> str:
    """`auto` = nvjpeg on CUDA devices, Pillow elsewhere."""
    if name != "auto":
        return name
    return "nvjpeg" if device.type == "cuda" else "pillow"


def default_workers() -> int:
    """CPU encoder threads for `runtime.encode_workers: auto`: up to 4, never more than the cores."""
    return max(1, min(4, os.cpu_count() or 1))


class BoundedPool:
    """`map` over a thread pool that keeps at most `window` items in flight, yielding results in input order.

    The producer (the device loop) runs ahead of the workers by at most `window` items, so host
    memory stays bounded however long the input is; an error in a worker surfaces in order.
    """

    def __init__(self, workers: int, window: int | None = None, name: str = "encode"):
        self.window = window or 2 * workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        inflight: deque[Future[R]] = deque()
        try:
            for item in items:
                inflight.append(self._pool.submit(fn, item))
                if len(inflight) >= self.window:
                    yield inflight.popleft().result()
            while inflight:
                yield inflight.popleft().result()
        finally:
            for future in inflight:
                future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
