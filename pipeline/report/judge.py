"""An independent judge: a second face-recognition model, never used for curation, scores the exported dataset.

Curation decides who is a person with InceptionResnetV1; grading those decisions with the same model would
grade its own homework. The judge (`judge.model`, one registry) embeds a seeded choice of the dataset's
identities and reports genuine (same class) and impostor (different classes) similarity over every pair
of those samples: histograms, means, the equal-error rate and the true-accept rate at a false-accept rate
of 1e-3. `dlib_resnet` is dlib's ResNet-34 face descriptor (128-d, its authors: 99.38% on LFW, same person
below Euclidean distance 0.6) with dlib's own five-point alignment, from `face_recognition_models`; it runs
on the CPU (about 60 ms per face).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.registry import Registry
from pipeline.report.verification import HISTOGRAM_EDGES, verification_rates
from pipeline.shards.candidates import candidate_images
from pipeline.weights import WEIGHTS, WeightsStore

log = logging.getLogger(__name__)

#: dlib's own same-person threshold on the Euclidean distance of its descriptors.
DLIB_SAME_PERSON = 0.6
INSTALL_HINT = "install the judge extra: uv sync --extra judge (dlib-bin, face_recognition_models)"


class Judge(Protocol):
    name: str
    label: str

    def describe(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """One descriptor for the face in `box` (x0, y0, x1, y1) of an HWC uint8 RGB image."""
        ...


class DlibJudge:
    """dlib's face recognition ResNet on a 150 px chip aligned by dlib's 5-point shape predictor."""

    name = "dlib_resnet"
    label = "dlib ResNet-34 face descriptor (dlib_face_recognition_resnet_model_v1, 128-d)"

    def __init__(self, store: WeightsStore | None = None):
        try:
            import dlib
        except ImportError as err:
            raise PipelineError(f"judge.model: dlib_resnet needs dlib; {INSTALL_HINT}") from err
        store = store or WeightsStore()
        paths = {}
        for key in ("dlib-resnet-v1", "dlib-shape-5"):
            path = store.judge_file(WEIGHTS[key].file)
            if path is None:
                raise PipelineError(
                    f"judge.model: {WEIGHTS[key].file} not found in {store.folder}/ or the "
                    f"face_recognition_models package; {INSTALL_HINT}, or set judge.model: none"
                )
            store.verify(path)
            paths[key] = path
        self._dlib = dlib
        self.shapes = dlib.shape_predictor(str(paths["dlib-shape-5"]))
        self.net = dlib.face_recognition_model_v1(str(paths["dlib-resnet-v1"]))

    def describe(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        shape = self.shapes(image, self._dlib.rectangle(x0, y0, x1, y1))
        chip = self._dlib.get_face_chip(image, shape, size=150, padding=0.25)
        return np.asarray(self.net.compute_face_descriptor(chip), np.float32)


JUDGES: Registry[Judge] = Registry("judge")
JUDGES.register("dlib_resnet")(DlibJudge)


def pair_scores(descriptors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cosine similarity and Euclidean distance of every pair: (genuine cos, impostor cos, genuine dist,
    impostor dist)."""
    d = np.asarray(descriptors, np.float64)
    unit = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    i, j = np.triu_indices(len(d), 1)
    cos = np.einsum("ij,ij->i", unit[i], unit[j])
    dist = np.linalg.norm(d[i] - d[j], axis=1)
    same = labels[i] == labels[j]
    return cos[same], cos[~same], dist[same], dist[~same]


def _same_person_classes(descriptors: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Class pairs whose mean descriptors the judge calls the same person (Euclidean distance under its
    threshold), among every pair of the judged classes: the label audit scales this to the dataset."""
    classes, inverse = np.unique(labels, return_inverse=True)
    means = np.zeros((len(classes), descriptors.shape[1]))
    np.add.at(means, inverse, descriptors)
    means /= np.bincount(inverse)[:, None]
    i, j = np.triu_indices(len(classes), 1)
    same = np.linalg.norm(means[i] - means[j], axis=1) < DLIB_SAME_PERSON
    return {"class_pairs": len(i), "same_person_class_pairs": int(same.sum())}


def judge_samples(metadata: Path, identities: int, seed: int = 0) -> pa.Table:
    """key, identity, class and box of every sample of a seeded choice of `identities` classes."""
    table = pq.read_table(metadata, columns=["key", "identity", "class", "box"])
    classes = np.unique(table.column("class").to_numpy())
    chosen = np.random.default_rng(seed).choice(classes, min(identities, len(classes)), replace=False)
    mask = np.isin(table.column("class").to_numpy(), chosen)
    return table.filter(pa.array(mask))


def judge_dataset(judge: Judge, samples: pa.Table, images: dict[str, bytes]) -> dict[str, Any]:
    """The judge's verdict on `samples` (their full images by key): pair counts, means, rates, histograms."""
    descriptors = []
    for key, box in zip(samples.column("key").to_pylist(), samples.column("box").to_pylist(), strict=True):
        image = np.asarray(Image.open(io.BytesIO(images[key])).convert("RGB"))
        descriptors.append(judge.describe(image, np.asarray(box)))
    labels = samples.column("class").to_numpy()
    g_cos, i_cos, g_dist, i_dist = pair_scores(np.stack(descriptors), labels)
    out: dict[str, Any] = {
        "model": judge.name,
        "label": judge.label,
        "classes": len(np.unique(labels)),
        "samples": len(labels),
        "genuine_pairs": len(g_cos),
        "impostor_pairs": len(i_cos),
    }
    out |= _same_person_classes(np.stack(descriptors), labels)
    if not len(g_cos) or not len(i_cos):
        return out
    out |= {
        "genuine_cosine_mean": float(g_cos.mean()),
        "impostor_cosine_mean": float(i_cos.mean()),
        "genuine_distance_mean": float(g_dist.mean()),
        "impostor_distance_mean": float(i_dist.mean()),
        "genuine_same_person": float((g_dist < DLIB_SAME_PERSON).mean()),
        "impostor_same_person": float((i_dist < DLIB_SAME_PERSON).mean()),
        **verification_rates(g_cos, i_cos),
        "histogram": {
            "cosine": [float(x) for x in (HISTOGRAM_EDGES[:-1] + HISTOGRAM_EDGES[1:]) / 2],
            "genuine": [float(x) for x in np.histogram(g_cos, HISTOGRAM_EDGES)[0] / len(g_cos)],
            "impostor": [float(x) for x in np.histogram(i_cos, HISTOGRAM_EDGES)[0] / len(i_cos)],
        },
    }
    return out


def run_judge(
    model: str, identities: int, candidates: Path, metadata: Path, store: WeightsStore | None = None
) -> dict[str, Any]:
    """The judge `model` on `identities` classes of the dataset whose metadata.parquet is `metadata`."""
    samples = judge_samples(metadata, identities)
    judge = JUDGES.create(model, store=store)
    verdict = judge_dataset(judge, samples, candidate_images(candidates, set(samples.column("key").to_pylist())))
    log.info("judge %s: %d samples of %d classes, EER %s", model, verdict["samples"], verdict["classes"],
             f"{verdict['eer']:.3f}" if "eer" in verdict else "n/a")  # fmt: skip
    return verdict
