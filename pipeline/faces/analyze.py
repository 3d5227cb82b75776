"""The face stack on a batch of images: detect -> align -> embed -> quality and artifact scores in one device pass,
then one copy of everything to the host.

The device pass queues every op of the batch without waiting for a result (no `.item()`, no `nonzero`, no
copy), so the host can queue the next batch while the device works. Its outputs travel in two copies: one
float32 matrix of every per-image column (detection, landmarks, embedding, scores, and any columns the caller
adds) and the uint8 crops. An image the detector could not finish in its slots comes back flagged; those images
are detected again with more room (`attempt`) until complete, then aligned and embedded once: rare, and exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.config import AlignParams, DetectParams, EmbedParams
from pipeline.faces import align as alignment
from pipeline.faces.artifacts import artifact_scores, ordered
from pipeline.faces.boxes import BOX, COMPLETE, LANDMARKS, N_FACES, PROB, WIDTH, FaceBoxes
from pipeline.faces.columns import ARTIFACT_COLUMNS
from pipeline.faces.detect import DETECTORS, resolve
from pipeline.faces.embed import EMBEDDERS
from pipeline.faces.quality import PIXEL_SCORES, geometry_scores, pixel_scores
from pipeline.weights import WeightsStore

#: Columns of the host matrix after the detector's: alignment residual, SER-FIQ, pixel scores, the embedding, then
#: the artifact scores asked for and the caller's columns.
_RESIDUAL, _SERFIQ = WIDTH, WIDTH + 1
_PIXELS = slice(WIDTH + 2, WIDTH + 2 + len(PIXEL_SCORES))
_EMBEDDING = WIDTH + 2 + len(PIXEL_SCORES)


@dataclass
class FaceResult:
    """Candidate columns for the faces (detection, landmarks, embedding, q_*), the 8-bit aligned crops, and the
    host arrays attribute estimators read."""

    columns: dict[str, Any]
    crops: np.ndarray  # [B, S, S, 3] uint8
    landmarks: np.ndarray  # [B, 5, 2] float32, zeros where no face was found
    found: np.ndarray  # [B] bool
    extra: dict[str, np.ndarray]  # the caller's device columns, copied with the rest


class FaceAnalyzer:
    """Detector, aligner, embedder and scorers configured from the `detect`, `align` and `embed` sections;
    `scorers`: the artifact scorers to run (`artifacts.scorers`)."""

    def __init__(
        self,
        detect: DetectParams,
        align: AlignParams,
        embed: EmbedParams,
        device: torch.device,
        image_size: int,
        weights: WeightsStore | None = None,
        scorers: list[str] | tuple[str, ...] = (),
    ):
        self.device, self.serfiq_passes = device, embed.serfiq_passes
        self.scorers = ordered(scorers)
        d, e = detect, embed
        self.detector = DETECTORS.create(
            d.model, image_size=image_size, device=device, min_face_size=d.min_face_size,
            thresholds=d.thresholds, factor=d.factor, count_min_prob=d.count_min_prob,
        )  # fmt: skip
        self.aligner = alignment.Aligner(align.size, align.margin, device)
        self.embedder = EMBEDDERS.create(
            e.model, weights=e.weights, store=weights, input_size=e.input_size, device=device,
            allow_random=e.allow_random,
        )  # fmt: skip

    @property
    def needs_calibration(self) -> bool:
        return self.embedder.needs_calibration

    def calibrate(self, pixels: torch.Tensor) -> None:
        """Centre a randomly initialised embedder on the faces found in `pixels` (see embed.py)."""
        det = resolve(self.detector, pixels)
        crops, _ = self.align(pixels, det)
        found = det.found
        # BatchNorm statistics need two samples or more: with fewer faces, use every (whole-frame) crop.
        self.embedder.calibrate(crops[found] if int(found.sum()) >= 2 else crops)

    def align(self, pixels: torch.Tensor, det: FaceBoxes) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned crops [B, S, S, 3] uint8 (what is stored is what is embedded) and the fit residual / crop size
        [B] (1.0 where no face was found: the whole frame is scaled into the crop)."""
        z, t, residual = self.aligner.fit(det.landmarks)
        found = det.found
        whole_z, whole_t = self.aligner.whole_frame(pixels.shape[1], pixels.shape[2])
        z, t = torch.where(found, z, whole_z), torch.where(found, t, whole_t)
        crops = self.aligner.warp(pixels, z, t).round().clamp_max(255.0).to(torch.uint8)
        return crops, torch.where(found, residual / self.aligner.size, 1.0)

    def device_pass(
        self, pixels: torch.Tensor, det: FaceBoxes | None = None, extra: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every per-image column [B, C] float32 and the crops [B, S, S, 3] uint8, on the device (no host wait).
        `det`: detections already made; `extra` [B, E]: the caller's columns, appended last."""
        det = self.detector(pixels) if det is None else det
        crops, residual = self.align(pixels, det)
        features = self.embedder.features(crops)
        parts = [
            det.packed,
            residual[:, None],
            self.embedder.serfiq(features, self.serfiq_passes)[:, None],
            pixel_scores(crops),
            self.embedder.head(features),
        ]
        if self.scorers:
            parts.append(artifact_scores(self.scorers, pixels, det.landmarks, det.boxes, det.found))
        if extra is not None:
            parts.append(extra)
        return torch.cat(parts, 1), crops

    def __call__(self, pixels: torch.Tensor, extra: dict[str, torch.Tensor] | None = None) -> FaceResult:
        """pixels: [B, H, W, 3] uint8 on the device; `extra`: the caller's [B] device columns to copy with the rest."""
        names = list(extra or {})
        stacked = torch.stack([extra[n].to(torch.float32) for n in names], 1) if extra else None
        values, crops = (t.numpy(force=True) for t in self.device_pass(pixels, extra=stacked))
        todo = np.flatnonzero(values[:, COMPLETE] <= 0)
        if todo.size:  # rare: detection alone until complete, then the rest of the pass once
            sub = pixels[torch.from_numpy(todo).to(pixels.device)]
            again, again_crops = self.device_pass(sub, det=resolve(self.detector, sub, attempt=1))
            values[todo, : again.shape[1]], crops[todo] = again.numpy(force=True), again_crops.numpy(force=True)
        return self._columns(values, crops, names, tuple(pixels.shape[1:3]))

    def _columns(
        self, values: np.ndarray, crops: np.ndarray, names: list[str], image_size: tuple[int, int]
    ) -> FaceResult:
        found = values[:, PROB] > 0
        landmarks = values[:, LANDMARKS].reshape(-1, 5, 2)
        boxes = values[:, BOX]
        embedding_end = _EMBEDDING + self.embedder.net.last_linear.out_features
        columns: dict[str, Any] = {
            "det_prob": values[:, PROB].copy(),
            "n_faces": values[:, N_FACES].astype(np.int16),
            "box": list(boxes),
            "landmarks": list(values[:, LANDMARKS]),
            "embedding": list(values[:, _EMBEDDING:embedding_end].astype(np.float16)),
            "q_align_residual": values[:, _RESIDUAL].copy(),
            **geometry_scores(boxes, landmarks, found, image_size),
            **{name: values[:, _PIXELS][:, k].copy() for k, name in enumerate(PIXEL_SCORES)},
            "q_serfiq": values[:, _SERFIQ].copy(),
        }
        for k, name in enumerate(self.scorers):
            columns[ARTIFACT_COLUMNS[name]] = values[:, embedding_end + k].copy()
        extra_start = embedding_end + len(self.scorers)
        extra = {name: values[:, extra_start + k].copy() for k, name in enumerate(names)}
        return FaceResult(columns, crops, landmarks.astype(np.float32), found, extra)
