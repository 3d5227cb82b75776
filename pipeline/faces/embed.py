"""Identity embeddings with facenet-pytorch's InceptionResnetV1: 512-d, L2-normalised."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from pipeline.registry import Registry
from pipeline.weights import EMBEDDER_WEIGHTS, OFFLINE_HINT, WEIGHTS, WeightsError, WeightsStore

log = logging.getLogger(__name__)

#: Classes of the training set behind each of facenet-pytorch's checkpoints (the logits layer's size).
TRAINING_CLASSES = {"vggface2": 8631, "casia-webface": 10575}
RANDOM_INIT_SEED = 0
#: Backbone layers made of residual blocks (run by `residual`).
RESIDUAL = frozenset({"repeat_1", "repeat_2", "repeat_3", "block8"})
#: Seed of SER-FIQ's dropout masks: the same masks for every sample (common random numbers), drawn once.
SERFIQ_SEED = 1234
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
        store: WeightsStore | None = None,
        input_size: int = 160,
        device: str | torch.device = "cpu",
        allow_random: bool = True,
    ):
        from facenet_pytorch import InceptionResnetV1

        self.input_size = input_size
        self.device = torch.device(device)
        store = store or WeightsStore()
        checkpoint = store.embedder_checkpoint(weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            net = InceptionResnetV1(pretrained=None, classify=False, num_classes=TRAINING_CLASSES[weights])
        if checkpoint is None and not allow_random:
            spec = WEIGHTS[EMBEDDER_WEIGHTS[weights]]
            raise WeightsError(
                f"embed.weights: {spec.file} not found in {store.folder}/ or $TORCH_HOME/checkpoints; "
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
            store.verify(checkpoint)
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
            self.weights_name = checkpoint.name
        self.net = fold_batch_norms(net.eval().requires_grad_(False)).to(self.device, memory_format=torch.channels_last)
        self.needs_calibration = checkpoint is None
        self._masks: dict[tuple[int, float], torch.Tensor] = {}

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
        """[B, S, S, 3] uint8 crops -> facenet's fixed standardisation at the network's input size, channels-last."""
        x = aligned.to(self.device).permute(0, 3, 1, 2).to(torch.float32)
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
        return (x - 127.5) / 128.0

    def features(self, aligned: torch.Tensor) -> torch.Tensor:
        """The backbone pass: pooled features [B, 1792] before dropout (the expensive part)."""
        x = self.preprocess(aligned)
        with torch.no_grad():
            for name in BACKBONE:
                layer = getattr(self.net, name)
                if name in RESIDUAL:
                    for block in layer if isinstance(layer, torch.nn.Sequential) else [layer]:
                        x = residual(block, x)
                else:
                    x = layer(x)
        return x.flatten(1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Dropout (identity in eval) -> linear -> BatchNorm -> L2 normalisation: the embedding."""
        with torch.no_grad():
            x = self.net.last_bn(self.net.last_linear(features))
            return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)  # F.normalize in one op fewer

    def __call__(self, aligned: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings [B, 512] of [B, S, S, 3] uint8 aligned crops."""
        return self.head(self.features(aligned))

    def dropout_masks(self, passes: int, dropout: float) -> torch.Tensor:
        """[passes, 1792] SER-FIQ's dropout masks, already scaled by 1 / (1 - p) as dropout does."""
        key = (passes, dropout)
        if key not in self._masks:
            keep = torch.full((passes, self.net.last_linear.in_features), 1.0 - dropout)
            drawn = torch.bernoulli(keep, generator=torch.Generator().manual_seed(SERFIQ_SEED))
            self._masks[key] = (drawn / max(1.0 - dropout, 1e-12)).to(self.device)
        return self._masks[key]

    def serfiq(self, features: torch.Tensor, passes: int, dropout: float | None = None) -> torch.Tensor:
        """SER-FIQ (Terhörst et al., CVPR 2020) from one backbone pass: `passes` dropout heads per image;
        quality = 2 / (1 + exp(mean pairwise distance of the normalised embeddings)), [B] on the device.

        In (0, 1], 1 = perfectly stable (higher is better); exactly 1 when dropout is 0. Every sample gets the
        same masks (common random numbers): a score is a function of the crop alone, two equal crops score
        the same, differences between samples carry no mask noise, and no mask is drawn per batch.
        """
        p = self.net.dropout.p if dropout is None else dropout
        b, d = features.shape
        if passes < 2:
            return torch.ones(b, device=features.device)
        scaled = (features[:, None] * self.dropout_masks(passes, p)).view(b * passes, d)
        emb = self.head(scaled).view(b, passes, -1)
        mean = torch.cdist(emb, emb).sum((1, 2)) / (passes * (passes - 1))
        return 2.0 / (1.0 + torch.exp(mean))


def fold_batch_norms(net: torch.nn.Module) -> torch.nn.Module:
    """InceptionResnetV1 in eval mode with the same output up to float rounding and 40% fewer ops per pass:
    every conv -> BatchNorm pair (facenet's BasicConv2d) folded into one conv, and each residual block's
    scale folded into its last conv (`residual` then adds without multiplying)."""
    from facenet_pytorch.models.inception_resnet_v1 import BasicConv2d, Block8, Block17, Block35
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, BasicConv2d):
                module.conv = fuse_conv_bn_eval(module.conv, module.bn)
                module.bn = torch.nn.Identity()
            elif isinstance(module, Block35 | Block17 | Block8):
                module.conv2d.weight.mul_(module.scale)
                module.conv2d.bias.mul_(module.scale)
                module.scale = 1.0
    return net


def residual(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """facenet's Block35 / Block17 / Block8 forward with the scale folded in (`fold_batch_norms`)."""
    branches = [getattr(block, f"branch{i}") for i in range(3) if hasattr(block, f"branch{i}")]
    out = block.conv2d(torch.cat([branch(x) for branch in branches], 1)) + x
    return out if getattr(block, "noReLU", False) else torch.relu(out)


EMBEDDERS: Registry[InceptionResnetEmbedder] = Registry("embedder")
EMBEDDERS.register("inception_resnet_v1")(InceptionResnetEmbedder)
