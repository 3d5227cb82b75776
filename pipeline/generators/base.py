"""The generator contract shared by every backend (DESIGN §5)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Generator(nn.Module):
    """z -> ws -> image, with NVIDIA's attribute names and call semantics."""

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

    def mapping(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "const",
    ) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)

    def true_attributes(self, ws: torch.Tensor) -> dict[str, np.ndarray]:
        """Attributes known by construction (only a parametric generator has them)."""
        return {}


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: float, cutoff: int | None) -> torch.Tensor:
    """Pull ws toward w_avg by psi, on the first `cutoff` layers only when cutoff is set."""
    if psi == 1.0:
        return ws
    if cutoff is None:
        return w_avg.lerp(ws, psi)
    ws = ws.clone()
    ws[:, :cutoff] = w_avg.lerp(ws[:, :cutoff], psi)
    return ws
