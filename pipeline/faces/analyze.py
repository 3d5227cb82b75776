"""The face stack on a batch of images: detect -> align -> embed -> quality scores, all on one device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Params
from pipeline.faces import align as alignment
from pipeline.faces.detect import DETECTORS, Detections
from pipeline.faces.embed import EMBEDDERS
from pipeline.faces.quality import geometry_scores, pixel_scores


@dataclass
class FaceResult:
    """Candidate columns for the faces (detection, landmarks, embedding, q_*) and the 8-bit aligned crops."""

    columns: dict[str, Any]
    crops: np.ndarray  # [B, S, S, 3] uint8


class FaceAnalyzer:
    """Detector, aligner, embedder and scorers configured from `detect`, `align` and `embed` params."""

    def __init__(
        self,
        params: Params,
        device: torch.device,
        image_size: int,
        weights_dir: Path | None = None,
        lock_path: Path | None = None,
    ):
        self.params, self.device = params, device
        d, e = params.detect, params.embed
        self.detector = DETECTORS.create(
            d.model, image_size=image_size, device=device, min_face_size=d.min_face_size,
            thresholds=d.thresholds, factor=d.factor, count_min_prob=d.count_min_prob,
        )  # fmt: skip
        self.template = alignment.template(params.align.size, params.align.margin).to(device)
        self.embedder = EMBEDDERS.create(
            e.model, weights=e.weights, weights_dir=weights_dir, input_size=e.input_size, device=device,
            allow_random=e.allow_random, lock_path=lock_path,
        )  # fmt: skip

    @property
    def needs_calibration(self) -> bool:
        return self.embedder.needs_calibration

    def calibrate(self, pixels: torch.Tensor) -> None:
        """Centre a randomly initialised embedder on the faces found in `pixels` (see embed.py)."""
        det = self.detector(pixels)
        crops, _ = self.align(pixels, det)
        found = torch.from_numpy(det.found).to(self.device)
        # BatchNorm statistics need two samples or more: with fewer faces, use every (whole-frame) crop.
        self.embedder.calibrate(crops[found] if int(found.sum()) >= 2 else crops)

    def align(self, pixels: torch.Tensor, det: Detections) -> tuple[torch.Tensor, np.ndarray]:
        """Aligned crops [B, 3, S, S] in [0, 1], quantised to 8 bits (what is stored is what is embedded),
        and the fit residual / crop size (1.0 where no face was found: the whole frame is scaled in)."""
        size = self.params.align.size
        landmarks = torch.from_numpy(det.landmarks).to(self.device)
        m, residual = alignment.umeyama(landmarks, self.template)
        found = torch.from_numpy(det.found).to(self.device)
        m = torch.where(found[:, None, None], m, _whole_frame(pixels.shape[1:3], size, self.device))
        crops = alignment.warp(pixels.permute(0, 3, 1, 2).float() / 255.0, m, size)
        crops = (crops * 255.0).round().clamp(0, 255) / 255.0
        residual = torch.where(found, residual / size, torch.ones_like(residual))
        return crops, residual.cpu().numpy()

    def __call__(self, pixels: torch.Tensor, seeds: list[int]) -> FaceResult:
        """pixels: [B, H, W, 3] uint8 on the device; seeds: one per image (for SER-FIQ's dropout masks)."""
        det = self.detector(pixels)
        crops, residual = self.align(pixels, det)
        features = self.embedder.features(crops)
        embeddings = self.embedder.head(features).cpu().numpy().astype(np.float16)
        scores = {"q_align_residual": residual.astype(np.float32)}
        scores |= geometry_scores(det, tuple(pixels.shape[1:3])) | pixel_scores(crops)
        scores["q_serfiq"] = self.embedder.serfiq(features, self.params.embed.serfiq_passes, seeds)
        columns = {
            "det_prob": det.probs,
            "n_faces": det.n_faces,
            "box": list(det.boxes),
            "landmarks": list(det.landmarks.reshape(-1, 10)),
            "embedding": list(embeddings),
            **scores,
        }
        crops_u8 = (crops * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return FaceResult(columns, crops_u8)


def _whole_frame(image_hw: torch.Size, size: int, device: torch.device) -> torch.Tensor:
    """Affine for a faceless image: scale the whole frame into the crop (so the crop is still an image)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    s = size / max(h, w)
    return torch.tensor([[s, 0.0, (size - s * w) / 2], [0.0, s, (size - s * h) / 2]], device=device)
