"""The generator contract shared by every backend (DESIGN §5)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class Generator(nn.Module):
    """z -> ws -> image, with NVIDIA's attribute names and call semantics.

    Every backend provides `mapping(z, c=None, truncation_psi=1, truncation_cutoff=None)` returning
    ws [N, num_ws, w_dim] and `synthesis(ws, noise_mode="const", **kwargs)` returning images
    [N, img_channels, H, W] in about [-1, 1], either as methods or (StyleGAN) as submodules named
    `mapping` and `synthesis`, which is why this base class does not define them.
    """

    z_dim: int
    c_dim: int
    w_dim: int
    num_ws: int
    img_resolution: int
    img_channels: int
    #: Shown wherever the model is named (logs, manifest, dataset card).
    label: str = ""
    #: License of the weights, copied into the dataset card.
    license: str = ""
    #: Hugging Face license id for the dataset card ("other" = see `license`).
    license_id: str = "other"
    #: sha256 of the weights file (or of a version tag for weightless generators): `model_sha256`.
    sha256: str = ""
    #: Images per synthesis call on a CPU (None = the whole batch). Convolutional generators are
    #: memory-bound there: one image at a time is fastest (bench/generator.py: batch 1 is 1.8x batch 4).
    cpu_batch: int | None = 1

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "const",
        **synthesis_kwargs: Any,
    ) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, **synthesis_kwargs)

    def true_attributes(self, ws: torch.Tensor) -> dict[str, np.ndarray]:
        """Attributes known by construction (only a parametric generator has them)."""
        return {}
