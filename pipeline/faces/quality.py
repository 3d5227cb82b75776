"""Quality scorers: each fills one `q_*` column (meanings in pipeline/faces/columns.py)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.faces.detect import Detections

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
_LUMA = (0.299, 0.587, 0.114)


def geometry_scores(det: Detections, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Scores from the box and the five landmarks alone."""
    h, w = image_size
    box, lm = det.boxes.astype(np.float64), det.landmarks.astype(np.float64)
    bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    left, right, nose = lm[:, 0], lm[:, 1], lm[:, 2]
    eye_vec = right - left
    eye_dist = np.hypot(eye_vec[:, 0], eye_vec[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        nose_pos = np.where(np.abs(eye_vec[:, 0]) > 1e-6, (nose[:, 0] - left[:, 0]) / eye_vec[:, 0], 0.0)
        eye_rel = np.where(bw > 0, eye_dist / bw, 0.0)
    inside = (
        (lm[:, :, 0] >= box[:, None, 0]) & (lm[:, :, 0] <= box[:, None, 2])
        & (lm[:, :, 1] >= box[:, None, 1]) & (lm[:, :, 1] <= box[:, None, 3])
    ).all(1)  # fmt: skip
    found = det.found
    return {
        "q_face_fraction": np.where(found, bw * bh / (h * w), 0.0).astype(np.float32),
        "q_roll": np.where(found, np.degrees(np.arctan2(eye_vec[:, 1], eye_vec[:, 0])), 0.0).astype(np.float32),
        "q_eye_distance": np.where(found, eye_rel, 0.0).astype(np.float32),
        "q_nose_position": np.where(found, nose_pos, 0.0).astype(np.float32),
        "q_landmarks_inside": (inside & found).astype(np.float32),
    }


def pixel_scores(aligned: torch.Tensor) -> dict[str, np.ndarray]:
    """Sharpness and exposure of aligned crops [B, 3, S, S] in [0, 1]."""
    luma = sum(c * aligned[:, i : i + 1] for i, c in enumerate(_LUMA)) * 255.0
    lap = F.conv2d(luma, _LAPLACIAN.to(luma), padding=0)
    s = aligned.shape[-1]
    centre = luma[:, :, s // 4 : s - s // 4, s // 4 : s - s // 4]
    clipped = ((centre <= 2.0) | (centre >= 253.0)).float().mean((1, 2, 3))
    return {
        "q_sharpness": lap.flatten(1).var(1).cpu().numpy().astype(np.float32),
        "q_brightness": (centre.mean((1, 2, 3)) / 255.0).cpu().numpy().astype(np.float32),
        "q_clipped": clipped.cpu().numpy().astype(np.float32),
    }
