"""Attribute estimators: each adds `attr_*` columns (class labels, probabilities or values) to candidates.

An estimator also declares, without loading anything, the categorical attributes it labels
(`catalog`): their classes and whether they describe a person (`identity`) or one image
(`sample`); and its continuous ones (`continuous`), which `variation.edits` can move along.
Balancing targets and edits are validated against them before any work starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch
import yaml

from pipeline.registry import Registry

if TYPE_CHECKING:
    from pipeline.config import AttributesParams, BalanceParams
    from pipeline.weights import WeightsStore

log = logging.getLogger(__name__)

ATTRIBUTE_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "attributes"
#: The ArcFace template's frontal nose height between the eyes (0) and the mouth (1).
FRONTAL_NOSE_HEIGHT = (71.7366 - 51.5988) / (92.2848 - 51.5988)


@dataclass(frozen=True)
class AttributeInfo:
    """A categorical attribute: who it describes (a person or one image) and its classes."""

    level: Literal["identity", "sample"]
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Direction:
    """A unit normal in W space and its offset: `normal . w + bias` is the signed distance to the boundary
    between `cls` and the other classes of `attribute` (positive = `cls`)."""

    attribute: str
    cls: str
    normal: np.ndarray
    bias: float
    accuracy: float

    def score(self, w: np.ndarray) -> np.ndarray:
        return w @ self.normal + self.bias


@dataclass
class AttributeBatch:
    """What estimators may look at for one batch of candidates."""

    pixels: torch.Tensor  # [B, H, W, 3] uint8 on the device
    landmarks: np.ndarray  # [B, 5, 2] float32 (zeros where no face was found)
    found: np.ndarray  # [B] bool
    ws: torch.Tensor  # [B, num_ws, w_dim]


class Estimator(Protocol):
    def __call__(self, batch: AttributeBatch) -> dict[str, np.ndarray]: ...


def head_pose(landmarks: np.ndarray, nose_depth: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Yaw, pitch, roll in degrees from five landmarks, by a weak-perspective model of a mean face.

    roll  = angle of the eye line.
    yaw   = atan(rho / d): rho = horizontal offset of the nose tip from the face's midline (midpoint
            of the eye and mouth centres) in half inter-ocular distances, after undoing the roll; d =
            `nose_depth`, the nose tip's depth in front of the eyes in the same unit.
    pitch = atan((h0 - h) * L / d): h = nose height between eye line (0) and mouth (1), h0 its frontal
            value on the ArcFace template, L = eye-to-mouth distance in half inter-ocular distances.
    Signs: positive yaw = nose toward image right, positive pitch = face turned up, positive roll =
    clockwise in the image. Accurate to a few degrees within +-45 deg yaw (landmark noise dominates).
    """
    pts = landmarks.astype(np.float64)
    left, right, nose = pts[:, 0], pts[:, 1], pts[:, 2]
    mouth = (pts[:, 3] + pts[:, 4]) / 2
    eyes = (left + right) / 2
    d = right - left
    roll = np.arctan2(d[:, 1], d[:, 0])
    c, s = np.cos(-roll)[:, None], np.sin(-roll)[:, None]

    def unroll(p: np.ndarray) -> np.ndarray:
        q = p - eyes
        return np.stack([q[:, 0] * c[:, 0] - q[:, 1] * s[:, 0], q[:, 0] * s[:, 0] + q[:, 1] * c[:, 0]], 1)

    half = np.maximum(np.hypot(d[:, 0], d[:, 1]) / 2, 1e-6)
    n, m = unroll(nose), unroll(mouth)
    midline_x = m[:, 0] / 2
    yaw = np.arctan((n[:, 0] - midline_x) / half / nose_depth)
    eye_mouth = np.maximum(m[:, 1], 1e-6)
    height = n[:, 1] / eye_mouth
    pitch = np.arctan((FRONTAL_NOSE_HEIGHT - height) * (eye_mouth / half) / nose_depth)
    return np.degrees(yaw), np.degrees(pitch), np.degrees(roll)


def bin_labels(values: np.ndarray, bins: dict[str, tuple[float, float]]) -> np.ndarray:
    """The name of the [low, high) bin holding each value; "" for NaN or a value outside every bin."""
    out = np.full(len(values), "", dtype=object)
    for name, (low, high) in bins.items():
        out[(values >= low) & (values < high)] = name
    return out.astype(str)


class PoseEstimator:
    """attr_yaw, attr_pitch, attr_roll (degrees; NaN without a face) and attr_yaw_bin (`attributes.yaw_bins`)."""

    def __init__(self, attributes: AttributesParams, **_: Any):
        self.bins = dict(attributes.yaw_bins)
        self.nose_depth = attributes.nose_depth

    @classmethod
    def catalog(cls, attributes: AttributesParams) -> dict[str, AttributeInfo]:
        return {"yaw_bin": AttributeInfo("sample", tuple(attributes.yaw_bins))}

    @classmethod
    def continuous(cls, attributes: AttributesParams) -> tuple[str, ...]:
        return ("yaw", "pitch", "roll")

    def __call__(self, batch: AttributeBatch) -> dict[str, np.ndarray]:
        yaw, pitch, roll = head_pose(batch.landmarks, self.nose_depth)
        for a in (yaw, pitch, roll):
            a[~batch.found] = np.nan
        return {
            "attr_yaw": yaw.astype(np.float32),
            "attr_pitch": pitch.astype(np.float32),
            "attr_roll": roll.astype(np.float32),
            "attr_yaw_bin": bin_labels(yaw, self.bins),
        }


class SmokeTruthEstimator:
    """The smoke-test generator's own parameters (known by construction, so balancing can be checked)."""

    def __init__(self, attributes: AttributesParams, generator: Any = None, **_: Any):
        self.generator = generator

    @classmethod
    def catalog(cls, attributes: AttributesParams) -> dict[str, AttributeInfo]:
        from pipeline.generators.smoke import SKIN_BINS

        return {
            "smoke_hair": AttributeInfo("identity", ("dark", "light")),
            "smoke_skin": AttributeInfo("identity", SKIN_BINS),
        }

    @classmethod
    def continuous(cls, attributes: AttributesParams) -> tuple[str, ...]:
        return ("smoke_yaw", "smoke_pitch", "smoke_roll", "smoke_smile")

    def __call__(self, batch: AttributeBatch) -> dict[str, np.ndarray]:
        return self.generator.true_attributes(batch.ws)


class LatentEstimator:
    """attr_latent_<attribute>_<class>: a sample's signed distance along each calibrated W direction."""

    def __init__(self, attributes: AttributesParams, directions: list[Direction] | None = None, **_: Any):
        self.directions = directions or []
        if not self.directions:
            log.warning("attributes: the latent estimator has no calibrated directions (run the calibrate stage)")

    @classmethod
    def catalog(cls, attributes: AttributesParams) -> dict[str, AttributeInfo]:
        return {}

    @classmethod
    def continuous(cls, attributes: AttributesParams) -> tuple[str, ...]:
        return ()

    def __call__(self, batch: AttributeBatch) -> dict[str, np.ndarray]:
        w = batch.ws[:, 0].float().cpu().numpy()
        return {f"attr_latent_{d.attribute}_{d.cls}": d.score(w).astype(np.float32) for d in self.directions}


@dataclass(frozen=True)
class PromptSet:
    """One CLIP zero-shot attribute from configs/attributes/<name>.yaml."""

    name: str
    level: Literal["identity", "sample"]
    templates: tuple[str, ...]
    classes: dict[str, tuple[str, ...]]

    def prompts(self, cls: str) -> list[str]:
        return [t.format(phrase) for t in self.templates for phrase in self.classes[cls]]


def load_prompt_set(name: str, folder: Path = ATTRIBUTE_CONFIGS) -> PromptSet:
    """Read and check one attribute file; ValueError says what is wrong with it."""
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"no attribute file configs/attributes/{name}.yaml (available: {', '.join(known)})")
    data = yaml.safe_load(path.read_text()) or {}
    level, templates, classes = data.get("level"), data.get("templates"), data.get("classes")
    if level not in ("identity", "sample"):
        raise ValueError(f"configs/attributes/{name}.yaml: level must be identity or sample, got {level!r}")
    if not templates or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
        raise ValueError(f"configs/attributes/{name}.yaml: templates must be strings with exactly one {{}}")
    if not isinstance(classes, dict) or len(classes) < 2:
        raise ValueError(f"configs/attributes/{name}.yaml: classes must map at least two class names to phrases")
    for cls, phrases in classes.items():
        if not phrases or not all(isinstance(p, str) and p for p in phrases):
            raise ValueError(f"configs/attributes/{name}.yaml: class {cls!r} needs a list of phrases")
    return PromptSet(name, level, tuple(templates), {str(k): tuple(v) for k, v in classes.items()})


class ClipEstimator:
    """Zero-shot labels from open_clip: attr_<name> (most probable class) and attr_<name>_p_<class>."""

    def __init__(
        self,
        attributes: AttributesParams,
        device: torch.device | str = "cpu",
        weights: WeightsStore | None = None,
        **_: Any,
    ):
        from pipeline.faces.clip import ZeroShotClassifier

        a = attributes
        self.sets = [load_prompt_set(n) for n in a.clip_attributes]
        self.classifier = ZeroShotClassifier(
            a.clip_weights, torch.device(device), store=weights, allow_random=a.clip_allow_random
        )
        self.text = {s.name: self.classifier.class_embeddings([s.prompts(c) for c in s.classes]) for s in self.sets}

    @classmethod
    def catalog(cls, attributes: AttributesParams) -> dict[str, AttributeInfo]:
        sets = [load_prompt_set(n) for n in attributes.clip_attributes]
        return {s.name: AttributeInfo(s.level, tuple(s.classes)) for s in sets}

    @classmethod
    def continuous(cls, attributes: AttributesParams) -> tuple[str, ...]:
        sets = [load_prompt_set(n) for n in attributes.clip_attributes]
        return tuple(f"{s.name}_p_{c}" for s in sets for c in s.classes)

    def __call__(self, batch: AttributeBatch) -> dict[str, np.ndarray]:
        image = self.classifier.image_embeddings(batch.pixels)
        out: dict[str, np.ndarray] = {}
        for s in self.sets:
            probs = self.classifier.probabilities(image, self.text[s.name])
            names = np.asarray(list(s.classes))
            out[f"attr_{s.name}"] = names[probs.argmax(1)].astype(str)
            for k, cls in enumerate(s.classes):
                out[f"attr_{s.name}_p_{cls}"] = probs[:, k].astype(np.float32)
        return out


ATTRIBUTES: Registry[Estimator] = Registry("attribute estimator")
ATTRIBUTES.register("pose")(PoseEstimator)
ATTRIBUTES.register("smoke")(SmokeTruthEstimator)
ATTRIBUTES.register("latent")(LatentEstimator)
ATTRIBUTES.register("clip")(ClipEstimator)


def continuous_attributes(attributes: AttributesParams) -> list[str]:
    """Every continuous attribute (an `attr_<name>` float column) the configured estimators write: what
    `variation.edits` can move along."""
    return [n for e in attributes.estimators for n in ATTRIBUTES.get(e).continuous(attributes)]  # type: ignore[attr-defined]


def attribute_catalog(attributes: AttributesParams) -> dict[str, AttributeInfo]:
    """Every categorical attribute the configured estimators label (no model is loaded)."""
    catalog: dict[str, AttributeInfo] = {}
    for name in attributes.estimators:
        catalog |= ATTRIBUTES.get(name).catalog(attributes)  # type: ignore[attr-defined]
    return catalog


def balance_targets(attributes: AttributesParams, balance: BalanceParams) -> dict[str, dict[str, float]]:
    """`balance.targets` with every class of each attribute: classes left out share what is left equally."""
    catalog = attribute_catalog(attributes)
    full = {}
    for name, shares in balance.targets.items():
        rest = [c for c in catalog[name].classes if c not in shares]
        left = max(0.0, 1.0 - sum(shares.values()))
        full[name] = {
            c: round(float(shares.get(c, left / len(rest) if rest else 0.0)), 10) for c in catalog[name].classes
        }
    return full


class AttributeAnalyzer:
    """The configured estimators, run in order on each batch. `context` (weights, directions) reaches each."""

    def __init__(self, attributes: AttributesParams, generator: Any, device: torch.device, **context: Any):
        self.estimators = [
            ATTRIBUTES.create(name, attributes, generator=generator, device=device, **context)
            for name in attributes.estimators
        ]

    def __call__(self, batch: AttributeBatch) -> dict[str, np.ndarray]:
        columns: dict[str, np.ndarray] = {}
        for estimator in self.estimators:
            columns |= estimator(batch)
        return columns
