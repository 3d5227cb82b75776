"""Running a generator: its output as uint8 pixels, and synthesis at a precision in micro-batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.runtime.device import autocast


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8, NVIDIA's convention (x * 127.5 + 128, clamped, truncated)."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def synthesize(
    generator: torch.nn.Module,
    ws: torch.Tensor,
    precision: str,
    noise_mode: str,
    seeds: list[int] | None = None,
    transforms: np.ndarray | None = None,
    micro_batch: int | None = None,
) -> torch.Tensor:
    """fp32: every layer in fp32; fp16: the network's own fp16 layers (NVIDIA's mixed precision); bf16: autocast.
    `micro_batch` images per generator call (None = all at once); per-image results do not depend on it."""
    step = micro_batch or len(ws)
    if len(ws) > step:
        return torch.cat([
            synthesize(generator, ws[lo : lo + step], precision, noise_mode,
                       None if seeds is None else seeds[lo : lo + step],
                       None if transforms is None else transforms[lo : lo + step])
            for lo in range(0, len(ws), step)
        ])  # fmt: skip
    kwargs: dict[str, Any] = {"noise_mode": noise_mode, "force_fp32": precision != "fp16"}
    if noise_mode == "random" and seeds is not None:  # per-sample noise from the sample's own seed
        kwargs["noise_generators"] = [torch.Generator().manual_seed(s) for s in seeds]
    if transforms is not None:
        kwargs["input_transforms"] = torch.from_numpy(transforms).to(ws.device, torch.float32)
    with torch.no_grad(), autocast("bf16" if precision == "bf16" else "fp32", ws.device):
        images = generator.synthesis(ws, **kwargs)
    return images.float()
