"""Latents for (identity, variant) pairs: every random number comes from (seed, identity, variant) alone.

Variant 0 is the identity's canonical latent (try t of it when in-shard separation drew again: see
identities/separation.py). Variant v > 0 keeps the canonical latent, moved along calibrated directions on
the layers the calibrate stage chose when `variation.edits` asks for it (identities/variation.py), and
style-mixes a fresh latent into layers [mix_start, mix_stop) (pose, expression, light, background for
the layers chosen), optionally after jittering the canonical latent a little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import GeneratorParams, VariationParams
from pipeline.generators.base import Generator


def sample_seed(seed: int, identity: int, variant: int) -> int:
    """A 63-bit seed that reproduces one sample; written to the `seed` column."""
    state = np.random.SeedSequence([seed, identity, variant]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


#: Random streams of one sample: identity latent, jitter, mixing latent, StyleGAN3 transform, edit targets,
#: and the identity latent of separation try t > 0 (try 0 is the plain identity latent).
IDENTITY, JITTER, MIX, TRANSFORM, EDIT, SEPARATION_TRY = range(6)


def _normal(seed: int, identity: int, variant: int, stream: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng([seed, identity, variant, stream])
    return rng.standard_normal(dim)


def identity_latent(seed: int, identity: int, attempt: int, dim: int) -> np.ndarray:
    """z of an identity: try 0 is its own latent, try t > 0 a fresh draw from (seed, identity, t)."""
    if attempt == 0:
        return _normal(seed, identity, 0, IDENTITY, dim)
    return _normal(seed, identity, attempt, SEPARATION_TRY, dim)


@dataclass(frozen=True)
class EditAxis:
    """One edited attribute's move in ws: a unit direction applied to some layers (`Latents.ws` adds
    step x normal to each of them)."""

    normal: np.ndarray  # [w_dim]
    layers: tuple[int, ...]


class Latents:
    """ws for (identity, variant) pairs of one generator on one device, from `seed`, the truncation of the
    `generator` section and the `variation` section; every random number from (seed, identity, variant)."""

    def __init__(
        self,
        generator: Generator,
        seed: int,
        g: GeneratorParams,
        variation: VariationParams,
        device: torch.device,
        axes: list[EditAxis] | None = None,
    ):
        self.generator, self.seed, self.variation, self.device = generator, seed, variation, device
        self.psi, self.cutoff = g.truncation_psi, g.truncation_cutoff
        self.axes = axes or []

    def _map(self, z: np.ndarray) -> torch.Tensor:
        z_t = torch.from_numpy(z).to(self.device, torch.float32)
        return self.generator.mapping(z_t, None, truncation_psi=self.psi, truncation_cutoff=self.cutoff)

    def ws(
        self,
        identities: np.ndarray,
        variants: np.ndarray,
        offsets: np.ndarray | None = None,
        tries: np.ndarray | None = None,
        edits: np.ndarray | None = None,
    ) -> torch.Tensor:
        """ws [N, num_ws, w_dim] for each (identity, variant) pair, on the device.

        `offsets` [N, w_dim] move the identity's latent (every layer of the canonical ws, before
        style mixing), which is how steering changes who a person is and nothing else. `tries` [N] pick
        the separation try of each identity's latent (0: its own). `edits` [N, axes] are the steps along
        each edit axis (its direction, on its layers; identities/variation.py)."""
        v, seed, dim = self.variation, self.seed, self.generator.z_dim
        attempts = np.zeros(len(identities), np.int64) if tries is None else np.asarray(tries)
        z_id = np.stack([identity_latent(seed, int(i), int(t), dim) for i, t in zip(identities, attempts, strict=True)])
        jitter = np.stack(
            [_normal(seed, int(i), int(k), JITTER, dim) if k > 0 else np.zeros(dim)
             for i, k in zip(identities, variants, strict=True)]
        )  # fmt: skip
        z_mix = np.stack([_normal(seed, int(i), int(k), MIX, dim) for i, k in zip(identities, variants, strict=True)])
        ws = self._map(z_id + v.latent_jitter * jitter)
        if offsets is not None:
            ws = ws + torch.from_numpy(np.asarray(offsets, np.float32)).to(self.device)[:, None, :]
        if edits is not None:
            steps = torch.from_numpy(np.asarray(edits, np.float32)).to(self.device)
            for k, axis in enumerate(self.axes):
                move = steps[:, k, None] * torch.from_numpy(np.asarray(axis.normal, np.float32)).to(self.device)
                ws[:, list(axis.layers)] += move[:, None, :]
        mixed = torch.from_numpy(variants > 0).to(self.device)
        stop = v.mix_stop or self.generator.num_ws
        if v.mix and v.mix_start < stop and bool(mixed.any()):
            ws_mix = self._map(z_mix)
            layers = slice(v.mix_start, stop)
            ws[mixed, layers] = ws_mix[mixed, layers]
        return ws

    def transforms(self, identities: np.ndarray, variants: np.ndarray) -> np.ndarray | None:
        """Per-sample inverse input transforms [N, 3, 3] (StyleGAN3) for variants: a random translation in
        [-translate, translate] per axis and rotation in [-rotate, rotate] degrees; identity for variant 0."""
        from pipeline.generators.stylegan3 import make_transform

        v = self.variation
        if v.translate == 0 and v.rotate == 0:
            return None
        out = np.tile(np.eye(3), (len(identities), 1, 1))
        for k, (i, var) in enumerate(zip(identities, variants, strict=True)):
            if var > 0:
                rng = np.random.default_rng([self.seed, int(i), int(var), TRANSFORM])
                tx, ty, angle = rng.uniform(-1, 1, 3) * [v.translate, v.translate, v.rotate]
                out[k] = np.linalg.inv(make_transform((tx, ty), angle))
        return out


def check_variation(generator: Generator, v: VariationParams) -> list[str]:
    """Problems with `variation` that need the model's layer count (reported like config errors)."""
    n = generator.num_ws
    problems = []
    if (v.translate or v.rotate) and getattr(generator, "family", "") != "stylegan3":
        problems.append("variation.translate/rotate: need a StyleGAN3 generator (set them to 0)")
    if v.mix and v.mix_start >= n:
        problems.append(f"variation.mix_start: must be < the generator's {n} layers, got {v.mix_start}")
    start, stop = v.edit_layers(n)
    if v.edits and start >= stop:
        problems.append(f"variation.edit_start: must be below the edited layers' end ({stop}), got {start}")
    if v.mix_stop is not None and v.mix_stop > n:
        problems.append(f"variation.mix_stop: must be <= the generator's {n} layers, got {v.mix_stop}")
    return problems
