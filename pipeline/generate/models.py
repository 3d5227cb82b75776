"""The models of one device for the generate stage: generator (and its discriminator when realism is scored),
face stack, attribute estimators and JPEG encoder, loaded once and checked against the params that use them."""

from __future__ import annotations

import logging
from typing import Any

import torch

from pipeline.config import Params
from pipeline.errors import ConfigError, PipelineError
from pipeline.faces.analyze import FaceAnalyzer
from pipeline.faces.attributes import AttributeAnalyzer
from pipeline.generators import load_models
from pipeline.identities.calibration import STEER_PLAN, Calibration
from pipeline.identities.sampling import check_variation
from pipeline.runtime.device import effective_precision
from pipeline.shards.encode import JPEG_ENCODERS, resolve_jpeg_encoder
from pipeline.weights import WeightsStore

log = logging.getLogger(__name__)


class DeviceModels:
    """Everything one device runs, built from the params' sections, the weights store and the calibration."""

    def __init__(self, params: Params, device: torch.device, weights: WeightsStore, calibration: Calibration):
        g = params.generator
        self.device, self.calibration = device, calibration
        self.precision = effective_precision(params.runtime, device)
        self.jpeg_encoder = resolve_jpeg_encoder(params.runtime.jpeg_encoder, device)
        self.jpeg = JPEG_ENCODERS.create(self.jpeg_encoder, device=device)
        self.generator, disc = load_models(
            g.model, device, resolution=g.resolution, weights=weights, plant=params.artifacts.plant
        )
        problems = check_variation(self.generator, params.variation)
        if problems:
            raise ConfigError(problems)
        _check_calibration(params, calibration)
        self.discriminator = _per_sample(disc) if g.disc_score else None
        self.faces = FaceAnalyzer(
            params.detect, params.align, params.embed, device, self.generator.img_resolution, weights,
            scorers=params.artifacts.scorers,
        )  # fmt: skip
        self.attributes = AttributeAnalyzer(
            params.attributes, self.generator, device, weights=weights, directions=calibration.directions
        )
        if params.runtime.compile:
            self.generator.synthesis = torch.compile(self.generator.synthesis)

    @property
    def shaping(self) -> list[str]:
        """What of the models shapes candidate bytes (for the shard fingerprint)."""
        return [self.generator.sha256, self.faces.embedder.weights_name, self.precision, self.jpeg_encoder]

    def info(self, model: str) -> dict[str, Any]:
        """The candidate manifest's description of the models (`model`: the generator.model param)."""
        g = self.generator
        return {
            "generator": {
                "model": model,
                "label": g.label,
                "license": g.license,
                "license_id": g.license_id,
                "sha256": g.sha256,
                "resolution": g.img_resolution,
                "num_ws": g.num_ws,
            },
            "embedder_weights": self.faces.embedder.weights_name,
            "precision": self.precision,
            "jpeg_encoder": self.jpeg_encoder,
        }


def _check_calibration(params: Params, calibration: Calibration) -> None:
    """Edits need a calibrated regression each, steering a steer plan: say which stage to run."""
    missing = [a for a in params.variation.edits if a not in calibration.regressions]
    if missing:
        raise PipelineError(
            f"variation.edits: no calibrated direction for {', '.join(missing)} in the calibration folder "
            "(run the calibrate stage: dvc repro calibrate)"
        )
    if params.balance.mode == "steer" and calibration.steer_plan is None:
        raise PipelineError(f"balance.mode: steer needs the calibrate stage's {STEER_PLAN} (dvc repro calibrate)")


def _per_sample(disc: torch.nn.Module | None) -> torch.nn.Module | None:
    """The pickle's D with minibatch-std over groups of one, so each sample's score is its own."""
    if disc is None:
        log.info("generator has no discriminator: q_disc stays empty")
        return None
    disc.b4.mbstd.group_size = 1
    return disc
