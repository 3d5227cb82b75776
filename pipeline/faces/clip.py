"""CLIP zero-shot classification with open_clip: prompt ensembles per class, softmax over classes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from pipeline.weights import WeightsStore

log = logging.getLogger(__name__)

#: weights name (see pipeline.weights.WEIGHTS) -> open_clip architecture.
ARCHITECTURES = {"openclip-vit-b-32-laion2b": "ViT-B-32"}
RANDOM_INIT_SEED = 0


class ZeroShotClassifier:
    """An open_clip model on one device; weights from the weights stage (sha256-checked) or seeded random."""

    def __init__(
        self,
        weights: str,
        device: torch.device,
        store: WeightsStore | None = None,
        allow_random: bool = False,
    ):
        import open_clip

        from pipeline.weights import OFFLINE_HINT, WEIGHTS, WeightsError, WeightsStore

        self.device = device
        arch = ARCHITECTURES[weights]
        spec = WEIGHTS[weights]
        store = store or WeightsStore()
        path = store.path(spec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = open_clip.create_model(arch, pretrained=None)
        if path.is_file():
            store.verify(path)
            model.load_state_dict(_load_safetensors(path), strict=True)
            self.weights_name = weights
        elif allow_random:
            log.warning("attributes: %s not found, CLIP runs with RANDOM weights (labels are meaningless)", path)
            self.weights_name = "random"
        else:
            raise WeightsError(
                f"{path} not found: run the weights stage (uv run dvc repro weights), or set "
                f"attributes.clip_allow_random: true for an offline plumbing test. {OFFLINE_HINT}"
            )
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        cfg = self.model.visual.preprocess_cfg
        self.size = int(cfg["size"][0] if isinstance(cfg["size"], tuple | list) else cfg["size"])
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
        self.logit_scale = float(self.model.logit_scale.exp().clamp(max=100))

    @torch.no_grad()
    def class_embeddings(self, prompts_per_class: list[list[str]]) -> torch.Tensor:
        """[C, D]: per class, the normalised mean of its normalised prompt embeddings (prompt ensembling)."""
        rows = []
        for prompts in prompts_per_class:
            tokens = self.tokenizer(prompts).to(self.device)
            text = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            rows.append(F.normalize(text.mean(0), dim=0))
        return torch.stack(rows)

    @torch.no_grad()
    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, H, W, 3] uint8 -> [B, D] normalised; the frame is resized to the model's input (bicubic)."""
        x = pixels.permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True)
        x = (x.clamp(0, 1) - self.mean) / self.std
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    def probabilities(self, image: torch.Tensor, text: torch.Tensor) -> np.ndarray:
        """[B, C] softmax of the scaled cosine similarities."""
        return torch.softmax(self.logit_scale * image @ text.T, dim=-1).cpu().numpy()


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors cannot carry code, unlike a pickled .bin checkpoint."""
    from safetensors.torch import load_file

    return load_file(str(path))
