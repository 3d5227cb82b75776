"""The device pass: (identity, variant) pairs -> candidate columns, in batches that fit the device.

Each batch runs five steps on the device: synthesis -> whole-image scores -> faces (detect, align, embed,
quality) -> attributes -> table columns. The per-image columns reach the host in one copy, the crops in
another, the frames in a third when the CPU encodes them. Out of device memory, the batch size halves for
the rest of the run instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.config import Params
from pipeline.faces.analyze import FaceResult
from pipeline.faces.attributes import AttributeBatch
from pipeline.generate.models import DeviceModels
from pipeline.generate.records import HOST_CROPS, HOST_PIXELS
from pipeline.generators.synthesis import synthesize, to_uint8
from pipeline.identities.sampling import Latents, sample_seed
from pipeline.identities.variation import edit_axes
from pipeline.runtime.device import autocast, batch_size, probe_batch_size, synthesis_batch
from pipeline.shards.candidates import sample_key
from pipeline.shards.columns import Columns

log = logging.getLogger(__name__)

#: Seed of the fixed batch that centres a randomly initialised embedder (independent of params.seed).
CALIBRATION_SEED = 2**31 - 1
CALIBRATION_SAMPLES = 64


@dataclass
class SynthBatch:
    """One batch after synthesis: who, with which seeds and latents, and the images (NaN/Inf made finite)."""

    identities: np.ndarray
    variants: np.ndarray
    seeds: list[int]
    ws: torch.Tensor
    raw: torch.Tensor  # [B, 3, H, W] float, the generator's output

    def __post_init__(self) -> None:
        self.finite = torch.isfinite(self.raw).flatten(1).all(1)
        self.clean = torch.nan_to_num(self.raw, nan=0.0, posinf=1.0, neginf=-1.0)
        self.pixels = to_uint8(self.clean).permute(0, 2, 3, 1)  # [B, H, W, 3] uint8 on the device


class DevicePass:
    """One device's models and the pass that renders (identity, variant) pairs with them."""

    def __init__(self, params: Params, models: DeviceModels):
        self.models, self.device = models, models.device
        self.seed, self.psi, self.noise_mode = params.seed, params.generator.truncation_psi, params.generator.noise_mode
        v, num_ws = params.variation, models.generator.num_ws
        axes = edit_axes(v.edits, models.calibration.regressions, tuple(range(*v.edit_layers(num_ws))))
        self.latents = Latents(models.generator, params.seed, params.generator, v, self.device, axes)
        self.batch_size = batch_size(params.runtime, self.device)
        self.synthesis_batch = synthesis_batch(params.runtime, self.device, models.generator, self.batch_size)
        if models.faces.needs_calibration:
            self._calibrate_embedder(params)
        if params.runtime.batch_size == "auto":
            variants = params.identities.variants_per_identity
            self.batch_size = probe_batch_size(lambda n: self._probe(n, variants), self.device)
            self.synthesis_batch = synthesis_batch(params.runtime, self.device, models.generator, self.batch_size)

    def _probe(self, n: int, variants_per_identity: int) -> None:
        """One batch of n candidates of identity 0, for measuring memory (results are discarded)."""
        self.compute(np.zeros(n, np.int64), np.arange(n, dtype=np.int64) % variants_per_identity)

    def _calibrate_embedder(self, params: Params) -> None:
        """Centre a randomly initialised embedder on a fixed batch of canonical faces (see faces/embed.py)."""
        ids = np.arange(CALIBRATION_SAMPLES, dtype=np.int64)
        fixed = Latents(self.models.generator, CALIBRATION_SEED, params.generator, params.variation, self.device)
        self.models.faces.calibrate(to_uint8(self._synthesize(fixed.ws(ids, np.zeros_like(ids)))).permute(0, 2, 3, 1))

    def _synthesize(
        self, ws: torch.Tensor, seeds: list[int] | None = None, transforms: np.ndarray | None = None
    ) -> torch.Tensor:
        m = self.models
        return synthesize(m.generator, ws, m.precision, self.noise_mode, seeds, transforms, self.synthesis_batch)

    def _synthesis(self, identities: np.ndarray, variants: np.ndarray, **rows: np.ndarray | None) -> SynthBatch:
        """Step 1: latents and images; `rows` are `Latents.ws`'s per-sample moves (offsets, tries, edits)."""
        ws = self.latents.ws(identities, variants, **rows)
        seeds = [sample_seed(self.seed, int(i), int(v)) for i, v in zip(identities, variants, strict=True)]
        raw = self._synthesize(ws, seeds, self.latents.transforms(identities, variants))
        return SynthBatch(identities, variants, seeds, ws, raw)

    def _scores(self, batch: SynthBatch) -> dict[str, torch.Tensor]:
        """Step 2: whole-image scores: q_finite, and q_disc (the discriminator, in the stage's precision) when
        `generator.disc_score` asks for it, else NaN."""
        scores = {"q_finite": batch.finite.to(torch.float32)}
        disc, precision = self.models.discriminator, self.models.precision
        if disc is None:
            scores["q_disc"] = torch.full_like(scores["q_finite"], torch.nan)
            return scores
        with torch.no_grad(), autocast("bf16" if precision == "bf16" else "fp32", self.device):
            logits = disc(batch.clean, None, force_fp32=precision != "fp16")
        scores["q_disc"] = logits.float().flatten()
        return scores

    def compute(self, identities: np.ndarray, variants: np.ndarray, **rows: np.ndarray | None) -> Columns:
        """The device half of one batch: every candidate column but the encoded images, plus the host arrays
        `records.encode` turns into them."""
        batch = self._synthesis(identities, variants, **rows)
        faces = self.models.faces(batch.pixels, extra=self._scores(batch))
        attributes = self.models.attributes(AttributeBatch(batch.pixels, faces.landmarks, faces.found, batch.ws))
        return self._table(batch, faces, attributes)

    def _table(self, batch: SynthBatch, faces: FaceResult, attributes: dict[str, np.ndarray]) -> Columns:
        """Step 5: the batch's candidate columns in schema order (images still to encode)."""
        ids, var = batch.identities, batch.variants
        columns: Columns = {
            "key": [sample_key(int(i), int(v)) for i, v in zip(ids, var, strict=True)],
            "identity": ids.astype(np.int64),
            "variant": var.astype(np.int16),
            "seed": np.array(batch.seeds, np.int64),
            "psi": np.full(len(ids), self.psi, np.float32),
            **faces.columns,
            **faces.extra,
            **attributes,
            HOST_CROPS: faces.crops,
        }
        jpeg = self.models.jpeg
        if jpeg.device_side:
            columns["image"] = jpeg(batch.pixels)
        else:
            columns[HOST_PIXELS] = batch.pixels.cpu().numpy()
        return columns

    def fitted_batch(self, identities: np.ndarray, variants: np.ndarray, **rows: np.ndarray | None) -> Columns:
        """`compute(...)` on as many leading pairs as fit in device memory: on out-of-memory the batch size is
        halved for the rest of the run (down to 1, then the error stands). Callers continue after what ran."""
        while True:
            try:
                return self.compute(identities, variants, **rows)
            except torch.OutOfMemoryError:
                if len(identities) <= 1:
                    raise
                self.batch_size = max(1, len(identities) // 2)
                log.warning("out of device memory: batch size lowered to %d", self.batch_size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                identities, variants = identities[: self.batch_size], variants[: self.batch_size]
                rows = _rows(rows, slice(0, self.batch_size))

    def render(self, identities: np.ndarray, variants: np.ndarray, **rows: np.ndarray | None) -> Iterator[Columns]:
        """The device halves of all pairs, batch by batch (not encoded): what the latent plans render with."""
        lo = 0
        while lo < len(identities):
            part = slice(lo, lo + self.batch_size)
            columns = self.fitted_batch(identities[part], variants[part], **_rows(rows, part))
            lo += len(columns["key"])
            yield columns


def _rows(rows: dict[str, Any], part: slice) -> dict[str, Any]:
    """A slice of `Latents.ws`'s per-sample arrays (None stays None)."""
    return {k: None if v is None else v[part] for k, v in rows.items()}
