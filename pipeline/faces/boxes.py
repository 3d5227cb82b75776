"""The detectors' result (one packed float32 row per image, so it reaches the host in one copy) and the box
geometry MTCNN's stages share: overlaps, squaring, regression."""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Columns of `FaceBoxes.packed`.
BOX, PROB, LANDMARKS, N_FACES, COMPLETE = slice(0, 4), 4, slice(5, 15), 15, 16
WIDTH = 17


@dataclass(frozen=True)
class FaceBoxes:
    """Per image, one float32 tensor [B, 17] on the device: the most probable face (then the largest; zeros and
    prob 0 when none) as box x0 y0 x1 y1, its probability and five landmarks (x, y of left eye, right eye, nose,
    mouth left, mouth right); the number of faces at or above the count probability; 1 when every candidate fit
    the detector's slots (0: run the image again with the next `attempt`)."""

    packed: torch.Tensor

    @property
    def boxes(self) -> torch.Tensor:
        return self.packed[:, BOX]

    @property
    def probs(self) -> torch.Tensor:
        return self.packed[:, PROB]

    @property
    def landmarks(self) -> torch.Tensor:
        return self.packed[:, LANDMARKS].reshape(-1, 5, 2)

    @property
    def n_faces(self) -> torch.Tensor:
        return self.packed[:, N_FACES]

    @property
    def complete(self) -> torch.Tensor:
        return self.packed[:, COMPLETE] > 0

    @property
    def found(self) -> torch.Tensor:
        return self.packed[:, PROB] > 0


def default_min_face_size(image_size: int) -> int:
    """Generated faces fill much of the frame: skip the pyramid levels for tiny faces (most of MTCNN's cost)."""
    return max(20, image_size // 5)


def iou(boxes: torch.Tensor, plus_one: bool, metric: str = "iou") -> torch.Tensor:
    """[B, K, K] overlaps of each image's boxes: IoU as torchvision's nms computes it, or facenet's numpy
    "Min" (intersection over the smaller box), with +1 pixel sizes where facenet uses them."""
    a, b = boxes[:, :, None], boxes[:, None]
    inter = torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])
    size = boxes[..., 2:] - boxes[..., :2]
    if plus_one:
        inter, size = inter + 1.0, size + 1.0
    inter, area = inter.clamp_min(0.0).prod(-1), size.prod(-1)
    if metric == "min":
        return inter / torch.minimum(area[:, :, None], area[:, None])
    return inter / (area[:, :, None] + area[:, None] - inter)


def rerec(boxes: torch.Tensor) -> torch.Tensor:
    """facenet's `rerec`: each box squared around its centre on its longer side."""
    xy, wh = boxes[..., :2], boxes[..., 2:] - boxes[..., :2]
    side = wh.amax(-1, keepdim=True)
    xy = xy + wh * 0.5 - side * 0.5
    return torch.cat([xy, xy + side], -1)


def bbreg(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """facenet's `bbreg`: move each corner by the regression times the box's +1 pixel size."""
    return boxes + reg * (boxes[..., 2:] - boxes[..., :2] + 1).repeat(1, 1, 2)
