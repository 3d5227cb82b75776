"""Identity embeddings with facenet-pytorch's InceptionResnetV1: 512-d, L2-normalised."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.registry import Registry
from pipeline.weights import (
    DEFAULT_LOCK,
    EMBEDDER_WEIGHTS,
    OFFLINE_HINT,
    WEIGHTS,
    WeightsError,
    WeightsLock,
    find_embedder_checkpoint,
    verify,
)

log = logging.getLogger(__name__)

#: Classes of the training set behind each of facenet-pytorch's checkpoints (the logits layer's size).
TRAINING_CLASSES = {"vggface2": 8631, "casia-webface": 10575}
RANDOM_INIT_SEED = 0
#: InceptionResnetV1's layers up to the pooled features, in forward order.
BACKBONE = (
    "conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "conv2d_4b",
    "repeat_1", "mixed_6a", "repeat_2", "mixed_7a", "repeat_3", "block8", "avgpool_1a",
)  # fmt: skip


class InceptionResnetEmbedder:
    """InceptionResnetV1 on aligned crops.

    Without a checkpoint it falls back to a seeded random initialisation (same weights in every
    process) and `weights_sha256` is "none". Random post-ReLU features all share one large mean,
    which makes every cosine ~1; `calibrate` centres them by estimating the final BatchNorm's
    statistics on a fixed batch, so that similarities are at least comparable.
    """

    def __init__(
        self,
        weights: str = "vggface2",
        weights_dir: Path | None = None,
        input_size: int = 160,
        device: str | torch.device = "cpu",
        allow_random: bool = True,
        lock_path: Path | None = None,
    ):
        from facenet_pytorch import InceptionResnetV1

        self.input_size = input_size
        self.device = torch.device(device)
        checkpoint = find_embedder_checkpoint(weights, weights_dir)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            net = InceptionResnetV1(pretrained=None, classify=False, num_classes=TRAINING_CLASSES[weights])
        if checkpoint is None and not allow_random:
            spec = WEIGHTS[EMBEDDER_WEIGHTS[weights]]
            raise WeightsError(
                f"embed.weights: {spec.file} not found in {weights_dir or 'weights'}/ or $TORCH_HOME/checkpoints; "
                f"fetch it with `uv run dvc repro weights` ({spec.url}), "
                f"or set embed.allow_random: true for a plumbing run. {OFFLINE_HINT}"
            )
        if checkpoint is None:
            log.warning(
                "embedder: no %s checkpoint in weights/ or $TORCH_HOME/checkpoints; using RANDOM weights "
                "(identity similarities are not meaningful; run the weights stage for real embeddings)",
                weights,
            )
            self.weights_name = "none"
        else:
            verify(checkpoint, WeightsLock(lock_path or DEFAULT_LOCK))
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
            self.weights_name = checkpoint.name
        self.net = net.eval().requires_grad_(False).to(self.device)
        self.needs_calibration = checkpoint is None

    def calibrate(self, aligned: torch.Tensor) -> None:
        """Set the last BatchNorm's running mean/var from `aligned` (random weights only)."""
        bn = self.net.last_bn
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over this one batch
        features = self.features(aligned)
        bn.train()
        with torch.no_grad():
            bn(self.net.last_linear(features))
        bn.eval()
        self.needs_calibration = False

    def preprocess(self, aligned: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] -> facenet's fixed standardisation at the network's input size."""
        x = aligned.to(self.device, torch.float32)
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
        return (x * 255.0 - 127.5) / 128.0

    def features(self, aligned: torch.Tensor) -> torch.Tensor:
        """The backbone pass: pooled features [B, 1792] before dropout (the expensive part)."""
        net = self.net
        x = self.preprocess(aligned)
        with torch.no_grad():
            for name in BACKBONE:
                x = getattr(net, name)(x)
        return x.flatten(1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Dropout (identity in eval) -> linear -> BatchNorm -> L2 normalisation: the embedding."""
        with torch.no_grad():
            return F.normalize(self.net.last_bn(self.net.last_linear(features)), p=2, dim=1)

    def __call__(self, aligned: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings [B, 512] of aligned crops in [0, 1]."""
        return self.head(self.features(aligned))

    def serfiq(self, features: torch.Tensor, passes: int, seeds: list[int], dropout: float | None = None) -> np.ndarray:
        """SER-FIQ (Terhörst et al., CVPR 2020) from one backbone pass: `passes` stochastic dropout
        heads per image; quality = 2 / (1 + exp(mean pairwise distance of the normalised embeddings)).

        In (0, 1], 1 = perfectly stable (higher is better); exactly 1 when dropout is 0. Masks come
        from each sample's seed, so a score does not depend on the batch.
        """
        p = self.net.dropout.p if dropout is None else dropout
        b, d = features.shape
        if passes < 2:
            return np.ones(b, np.float32)
        masks = torch.stack(
            [
                torch.bernoulli(torch.full((passes, d), 1.0 - p), generator=torch.Generator().manual_seed(s))
                for s in seeds
            ]
        ).to(features.device)  # [B, m, D]
        scaled = features.unsqueeze(1) * masks / max(1.0 - p, 1e-12)
        emb = self.head(scaled.reshape(b * passes, d)).reshape(b, passes, -1)
        dist = torch.cdist(emb, emb)  # [B, m, m]
        mean = dist.sum((1, 2)) / (passes * (passes - 1))
        return (2.0 / (1.0 + torch.exp(mean))).cpu().numpy().astype(np.float32)


EMBEDDERS: Registry[InceptionResnetEmbedder] = Registry("embedder")
EMBEDDERS.register("inception_resnet_v1")(InceptionResnetEmbedder)
