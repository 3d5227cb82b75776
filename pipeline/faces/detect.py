"""Batched face detection with facenet-pytorch's MTCNN; one chosen face per image plus a face count."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.registry import Registry


@dataclass(frozen=True)
class Detections:
    """Per image: the most probable face (zeros and prob 0 when none) and how many faces were found."""

    boxes: np.ndarray  # [B, 4] float32, x0 y0 x1 y1 in pixels
    probs: np.ndarray  # [B] float32
    landmarks: np.ndarray  # [B, 5, 2] float32: left eye, right eye, nose, mouth left, mouth right
    n_faces: np.ndarray  # [B] int16, faces with prob >= count_min_prob

    @property
    def found(self) -> np.ndarray:
        return self.probs > 0


class MTCNNDetector:
    """MTCNN with keep_all=True (keep_all=False crashes on batches with a faceless image, issue #224)."""

    def __init__(
        self,
        image_size: int,
        device: str | torch.device = "cpu",
        min_face_size: int | None = None,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        count_min_prob: float = 0.9,
    ):
        from facenet_pytorch import MTCNN

        self.min_face_size = min_face_size or default_min_face_size(image_size)
        self.count_min_prob = count_min_prob
        self.mtcnn = MTCNN(
            keep_all=True,
            min_face_size=self.min_face_size,
            thresholds=list(thresholds),
            factor=factor,
            post_process=False,
            device=torch.device(device),
        )

    def __call__(self, images: torch.Tensor) -> Detections:
        """images: [B, H, W, 3] channels-last, values 0-255 (anything else silently finds no face)."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"MTCNN needs channels-last [B, H, W, 3] images, got shape {tuple(images.shape)}")
        with torch.no_grad():
            boxes, probs, points = self.mtcnn.detect(images.float(), landmarks=True)
        n = images.shape[0]
        out_boxes = np.zeros((n, 4), np.float32)
        out_probs = np.zeros(n, np.float32)
        out_points = np.zeros((n, 5, 2), np.float32)
        n_faces = np.zeros(n, np.int16)
        for i in range(n):
            if boxes[i] is None:
                continue
            p = np.asarray(probs[i], dtype=np.float64)
            areas = (boxes[i][:, 2] - boxes[i][:, 0]) * (boxes[i][:, 3] - boxes[i][:, 1])
            best = int(np.lexsort((-areas, -p))[0])  # most probable, then largest
            out_boxes[i], out_probs[i], out_points[i] = boxes[i][best], p[best], points[i][best]
            n_faces[i] = int((p >= self.count_min_prob).sum())
        return Detections(out_boxes, out_probs, out_points, n_faces)


def default_min_face_size(image_size: int) -> int:
    """Generated faces fill much of the frame: skip the pyramid levels for tiny faces (most of MTCNN's cost)."""
    return max(20, image_size // 5)


DETECTORS: Registry[MTCNNDetector] = Registry("detector")
DETECTORS.register("mtcnn")(MTCNNDetector)
