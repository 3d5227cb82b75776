"""Face detectors: one registry, one result type. `mtcnn` (the default) is facenet-pytorch's MTCNN batched for a
GPU (pipeline/faces/mtcnn.py); `mtcnn_facenet` runs facenet-pytorch's own `MTCNN.detect`, kept as the reference
the batched one is tested against."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from pipeline.faces.boxes import BOX, COMPLETE, LANDMARKS, N_FACES, PROB, WIDTH, FaceBoxes, default_min_face_size
from pipeline.registry import Registry

__all__ = ["DETECTORS", "Detector", "FaceBoxes", "FacenetMTCNN", "default_min_face_size", "resolve"]


class Detector(Protocol):
    min_face_size: int

    def __call__(self, pixels: torch.Tensor, attempt: int = 0) -> FaceBoxes:
        """pixels: [B, H, W, 3] uint8 channels-last on the detector's device. `attempt` n > 0 re-runs images
        that came back incomplete with room for more candidates."""
        ...


def resolve(detector: Detector, pixels: torch.Tensor, attempt: int = 0) -> FaceBoxes:
    """Detect (from `attempt`), then run the incomplete images again with growing `attempt` until every image is
    complete (one host round trip per try; the face pass makes this check with its final columns instead)."""
    out = detector(pixels, attempt)
    todo = torch.nonzero(~out.complete)[:, 0]
    while len(todo):
        attempt += 1
        again = detector(pixels[todo], attempt)
        out = FaceBoxes(out.packed.index_put((todo,), again.packed))
        todo = todo[~again.complete]
    return out


class FacenetMTCNN:
    """facenet-pytorch's `MTCNN.detect` with keep_all=True (keep_all=False crashes on batches with a faceless
    image, issue #224): per-box Python loops and host round trips, always complete."""

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

        self.device = torch.device(device)
        self.min_face_size = min_face_size or default_min_face_size(image_size)
        self.count_min_prob = count_min_prob
        self.mtcnn = MTCNN(
            keep_all=True,
            min_face_size=self.min_face_size,
            thresholds=list(thresholds),
            factor=factor,
            post_process=False,
            device=self.device,
        )

    def __call__(self, pixels: torch.Tensor, attempt: int = 0) -> FaceBoxes:
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"MTCNN needs channels-last [B, H, W, 3] images, got shape {tuple(pixels.shape)}")
        with torch.no_grad():
            boxes, probs, points = self.mtcnn.detect(pixels.float(), landmarks=True)
        out = np.zeros((len(pixels), WIDTH), np.float32)
        out[:, COMPLETE] = 1
        for i in range(len(pixels)):
            if boxes[i] is None:
                continue
            p = np.asarray(probs[i], dtype=np.float64)
            areas = (boxes[i][:, 2] - boxes[i][:, 0]) * (boxes[i][:, 3] - boxes[i][:, 1])
            best = int(np.lexsort((-areas, -p))[0])  # most probable, then largest
            out[i, BOX], out[i, PROB], out[i, LANDMARKS] = boxes[i][best], p[best], points[i][best].reshape(-1)
            out[i, N_FACES] = (p >= self.count_min_prob).sum()
        return FaceBoxes(torch.from_numpy(out).to(pixels.device))


def _batched(**kwargs: object) -> Detector:
    from pipeline.faces.mtcnn import BatchedMTCNN

    return BatchedMTCNN(**kwargs)  # type: ignore[arg-type]


DETECTORS: Registry[Detector] = Registry("detector")
DETECTORS.register("mtcnn")(_batched)
DETECTORS.register("mtcnn_facenet")(FacenetMTCNN)
