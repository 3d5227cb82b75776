"""Quality scorers: each fills one `q_*` column (meanings in pipeline/faces/columns.py). Pixel scores run on the
device with the rest of the face pass; geometry scores need only the box and the landmarks, so they run on the
host after the pass's one copy."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
_LUMA = torch.tensor([0.299, 0.587, 0.114])
#: The device's pixel scores, in the order `pixel_scores` stacks them.
PIXEL_SCORES = ("q_sharpness", "q_brightness", "q_clipped")


def geometry_scores(
    boxes: np.ndarray, landmarks: np.ndarray, found: np.ndarray, image_size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Scores from the box [B, 4] and the five landmarks [B, 5, 2] alone (0 where no face was found)."""
    h, w = image_size
    box, lm = boxes.astype(np.float64), landmarks.astype(np.float64)
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
    return {
        "q_face_fraction": np.where(found, bw * bh / (h * w), 0.0).astype(np.float32),
        "q_roll": np.where(found, np.degrees(np.arctan2(eye_vec[:, 1], eye_vec[:, 0])), 0.0).astype(np.float32),
        "q_eye_distance": np.where(found, eye_rel, 0.0).astype(np.float32),
        "q_nose_position": np.where(found, nose_pos, 0.0).astype(np.float32),
        "q_landmarks_inside": (inside & found).astype(np.float32),
    }


_ON_DEVICE: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The luma weights and the Laplacian on `device`, copied once (a copy mid-pass stalls the host on a GPU)."""
    if device not in _ON_DEVICE:
        _ON_DEVICE[device] = (_LUMA.to(device), _LAPLACIAN.to(device))
    return _ON_DEVICE[device]


def pixel_scores(crops: torch.Tensor) -> torch.Tensor:
    """Sharpness, brightness and clipped share (PIXEL_SCORES) of [B, S, S, 3] uint8 aligned crops: [B, 3]."""
    luma_weights, laplacian = _constants(crops.device)
    luma = (crops.to(torch.float32) @ luma_weights)[:, None]  # [B, 1, S, S], 0-255
    sharpness = F.conv2d(luma, laplacian).flatten(1).var(1)
    s = luma.shape[-1]
    centre = luma[:, 0, s // 4 : s - s // 4, s // 4 : s - s // 4].flatten(1)
    clipped = ((centre <= 2.0) | (centre >= 253.0)).to(torch.float32).mean(1)
    return torch.stack([sharpness, centre.mean(1) / 255.0, clipped], 1)
