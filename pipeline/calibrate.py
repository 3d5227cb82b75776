"""Calibrate: one linear direction in W space per (attribute, class), InterFaceGAN style.

A calibration sample of identities (their own seed stream, never dataset identities) is
generated and labelled by the estimators; an L2-regularised logistic regression per class
(one vs. rest) on the canonical w gives the boundary's unit normal and offset, and its
accuracy on held-out identities says how far the direction can be trusted for steering.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize

from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.faces.attributes import (
    ATTRIBUTES,
    AttributeAnalyzer,
    AttributeBatch,
    Direction,
    attribute_catalog,
    balance_targets,
)
from pipeline.generate.version import calibration_fingerprint
from pipeline.identities.calibration import DIRECTIONS, STEER_PLAN, Calibration, read_directions, write_directions
from pipeline.identities.variation import Regression, fit_regression
from pipeline.shards.io import remove_temporaries, write_bytes_atomic, write_json_atomic
from pipeline.weights import WeightsStore

log = logging.getLogger(__name__)
#: Mixed into params.seed so calibration identities never coincide with dataset identities.
CALIBRATION_STREAM = 0xCA1B
MIN_PER_CLASS = 5


def fit_attributes(params: Params) -> list[str]:
    """`calibrate.attributes`, else every identity-level attribute the estimators label."""
    if params.calibrate.attributes is not None:
        return list(params.calibrate.attributes)
    return [n for n, info in attribute_catalog(params.attributes).items() if info.level == "identity"]


def calibration_seed(seed: int) -> int:
    return int(np.random.SeedSequence([seed, CALIBRATION_STREAM]).generate_state(1, np.uint32)[0])


def fit_direction(w: np.ndarray, positive: np.ndarray, regularization: float) -> tuple[np.ndarray, float]:
    """Logistic regression of `positive` on `w`; returns the unit normal and the offset in W units."""
    x = np.asarray(w, np.float64)
    y = np.where(positive, 1.0, -1.0)
    mean, scale = x.mean(0), x.std(0) + 1e-8
    z = (x - mean) / scale

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        beta, b0 = theta[:-1], theta[-1]
        margin = y * (z @ beta + b0)
        value = np.logaddexp(0.0, -margin).mean() + regularization * beta @ beta
        g = -y * 0.5 * (1.0 - np.tanh(margin / 2)) / len(y)  # d loss / d (z beta + b0) = -y sigmoid(-margin)
        return value, np.append(z.T @ g + 2 * regularization * beta, g.sum())

    theta = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B").x
    beta = theta[:-1] / scale  # back to raw w: score = beta . w + b
    bias = theta[-1] - (theta[:-1] / scale) @ mean
    norm = float(np.linalg.norm(beta)) or 1.0
    return beta / norm, float(bias / norm)


def fit_directions(
    w: np.ndarray, labels: dict[str, np.ndarray], classes: dict[str, tuple[str, ...]], holdout: float, reg: float
) -> tuple[list[Direction], list[dict[str, Any]]]:
    """One-vs-rest directions for every class with enough examples; rows describing each fit."""
    directions, rows = [], []
    for name, values in labels.items():
        known = values != ""
        n_test = round(known.sum() * holdout)
        idx = np.flatnonzero(known)
        train, test = idx[: len(idx) - n_test], idx[len(idx) - n_test :]
        for cls in classes[name]:
            pos = values == cls
            row = {"attribute": name, "class": cls, "positives": int(pos[idx].sum()), "labelled": len(idx)}
            if pos[train].sum() < MIN_PER_CLASS or (~pos[train]).sum() < MIN_PER_CLASS:
                log.warning("calibrate: %s=%s has too few examples to fit a direction", name, cls)
                rows.append(row | {"accuracy": None})
                continue
            normal, bias = fit_direction(w[train], pos[train], reg)
            d = Direction(name, cls, normal, bias, 0.0)
            accuracy = float(((d.score(w[test]) > 0) == pos[test]).mean()) if len(test) else float("nan")
            directions.append(Direction(name, cls, normal, bias, accuracy))
            rows.append(row | {"accuracy": accuracy})
    return directions, rows


def label_calibration_sample(
    params: Params,
    generator: Any,
    synthesize: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    attributes: list[str],
    batch_size: int,
    continuous: list[str] | None = None,
    **context: Any,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Canonical w [N, w_dim] of `calibrate.samples` calibration identities, their labels per categorical
    attribute, and their values per continuous one (`continuous`: attr_<name> columns; NaN without a face).
    The detector runs when an estimator reads landmarks (pose)."""
    from pipeline.faces.detect import DETECTORS, resolve
    from pipeline.identities.sampling import Latents

    continuous = continuous or []
    a = params.attributes
    catalog_of = {name: ATTRIBUTES.get(name).catalog(a) for name in a.estimators}  # type: ignore[attr-defined]
    values_of = {name: ATTRIBUTES.get(name).continuous(a) for name in a.estimators}  # type: ignore[attr-defined]
    needed = [
        name for name in a.estimators
        if set(catalog_of[name]) & set(attributes) or set(values_of[name]) & set(continuous)
    ]  # fmt: skip
    analyzer = AttributeAnalyzer(a.model_copy(update={"estimators": needed}), generator, device, **context)
    latents = Latents(generator, calibration_seed(params.seed), params.generator, params.variation, device)
    detector = None
    if "pose" in needed:
        d = params.detect
        detector = DETECTORS.create(
            d.model, image_size=generator.img_resolution, device=device, min_face_size=d.min_face_size,
            thresholds=d.thresholds, factor=d.factor, count_min_prob=d.count_min_prob,
        )  # fmt: skip
    n = params.calibrate.samples
    ws_rows, labels = [], {a: [] for a in attributes}
    values: dict[str, list[np.ndarray]] = {a: [] for a in continuous}
    for lo in range(0, n, batch_size):
        ids = np.arange(lo, min(lo + batch_size, n), dtype=np.int64)
        ws = latents.ws(ids, np.zeros_like(ids))
        pixels = synthesize(ws)
        b = len(ids)
        landmarks, found = np.zeros((b, 5, 2), np.float32), np.zeros(b, bool)
        if detector is not None:
            det = resolve(detector, pixels)
            landmarks, found = det.landmarks.numpy(force=True), det.found.numpy(force=True)
        columns = analyzer(AttributeBatch(pixels, landmarks, found, ws))
        ws_rows.append(ws[:, 0].float().cpu().numpy())
        for a in attributes:
            labels[a].append(np.asarray(columns[f"attr_{a}"]).astype(str))
        for a in continuous:
            values[a].append(np.asarray(columns[f"attr_{a}"], np.float64))
    return (
        np.concatenate(ws_rows),
        {a: np.concatenate(v) for a, v in labels.items()},
        {a: np.concatenate(v) for a, v in values.items()},
    )


def steer_plan(params: Params, directions: list[Direction]) -> dict[str, Any]:
    """What generate needs to steer: identity-level targets that have directions; {"mode": "select"} otherwise."""
    if params.balance.mode != "steer":
        return {"mode": "select"}
    catalog = attribute_catalog(params.attributes)
    fitted = {d.attribute for d in directions}
    targets = {
        n: t
        for n, t in balance_targets(params.attributes, params.balance).items()
        if catalog[n].level == "identity" and n in fitted
    }
    missing = [
        n
        for n, t in balance_targets(params.attributes, params.balance).items()
        if catalog[n].level == "identity" and n not in fitted
    ]
    if missing:
        log.warning("steer: no calibrated direction for %s; those targets are met by selection only", missing)
    b = params.balance
    return {"mode": "steer", "targets": targets, "margin": b.steer_margin, "chunk": b.steer_chunk}


def run_calibrate(
    params: Params,
    out_dir: Path,
    weights: WeightsStore | None = None,
    plots_csv: Path | None = None,
    layers_csv: Path | None = None,
) -> dict[str, Any]:
    """Fit (or reuse, when nothing they depend on changed) the directions; write the steer plan and plot data
    (held-out accuracy per direction; each edit's effect per candidate layer)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out_dir)  # a killed run's partial files: never recorded as outputs
    attributes = fit_attributes(params)
    fingerprint = calibration_fingerprint(params, attributes)
    if read_directions(out_dir).get("fingerprint") == fingerprint:
        log.info("calibrate: directions are up to date")
    elif not attributes and not params.variation.edits:
        write_directions(out_dir, fingerprint, [], [], 0)
    else:
        write_directions(out_dir, fingerprint, *_fit(params, attributes, weights))
    plan = steer_plan(params, Calibration.load(out_dir).directions)
    write_json_atomic(out_dir / STEER_PLAN, plan)
    summary = json.loads((out_dir / DIRECTIONS).read_text())
    if plots_csv is not None:
        write_accuracy_csv(plots_csv, summary["fits"])
    if layers_csv is not None:
        write_layers_csv(layers_csv, summary.get("edit_layers", []))
    return summary | {"steer": plan}


def _fit(
    params: Params, attributes: list[str], weights: WeightsStore | None
) -> tuple[list[Direction], list[dict[str, Any]], int, list[Regression], list[dict[str, Any]]]:
    """Render and label the calibration identities; fit their directions and the edits' regressions, then
    shape each edit (conditional direction, layers, slope: pipeline/edits.py)."""
    from pipeline.generators import load_generator
    from pipeline.generators.synthesis import synthesize, to_uint8
    from pipeline.runtime.device import batch_size, effective_precision, resolve_devices

    device = resolve_devices(params.runtime)[0]
    g = params.generator
    generator = load_generator(g.model, device, g.resolution, weights, plant=params.artifacts.plant)
    precision = effective_precision(params.runtime, device)

    def render(ws: torch.Tensor) -> torch.Tensor:
        return to_uint8(synthesize(generator, ws, precision, g.noise_mode)).permute(0, 2, 3, 1)

    edited = sorted(params.variation.edits)
    w, labels, values = label_calibration_sample(
        params, generator, render, device, attributes, batch_size(params.runtime, device), edited, weights=weights
    )
    catalog = attribute_catalog(params.attributes)
    c = params.calibrate
    directions, rows = fit_directions(
        w, labels, {a: catalog[a].classes for a in attributes}, c.holdout, c.regularization
    )
    for d in directions:
        log.info("calibrate: %s=%s held-out accuracy %.3f", d.attribute, d.cls, d.accuracy)
    regressions = []
    for name in edited:
        fitted = fit_regression(name, w, values[name], c.holdout, c.regularization)
        if fitted is None:
            raise PipelineError(
                f"variation.edits.{name}: too few calibration faces with a value of attr_{name} to fit its "
                f"direction ({int(np.isfinite(values[name]).sum())} of {len(w)}); raise calibrate.samples"
            )
        regressions.append(fitted)
        log.info("calibrate: %s regression slope %.3g per W unit, held-out R^2 %.3f", name, fitted.slope, fitted.r2)
    regressions, effects = _shape_edits(params, weights, device, generator.num_ws, directions, regressions)
    return directions, rows, len(w), regressions, effects


def _shape_edits(
    params: Params, weights: WeightsStore | None, device: torch.device, num_ws: int, directions: list[Direction],
    regressions: list[Regression],
) -> tuple[list[Regression], list[dict[str, Any]]]:  # fmt: skip
    """Each edit's conditional direction, layers and slope, measured through the generate stage's own device
    pass on a fixed set of calibration identities."""
    if not regressions:
        return [], []
    from pipeline.edits import MEASURED_IDENTITIES, shape_edit
    from pipeline.generate.worker import build_device_pass

    v = params.variation
    measuring = params.model_copy(update={
        "seed": calibration_seed(params.seed), "variation": v.model_copy(update={"edits": {}}),
        "balance": params.balance.model_copy(update={"mode": "select"}),
    })  # fmt: skip
    dp = build_device_pass(measuring, device, weights or WeightsStore(), Calibration())
    ids = np.arange(MEASURED_IDENTITIES, dtype=np.int64)

    def render(axis: Any, step: float | None) -> dict[str, Any]:
        dp.latents.axes = [axis]
        steps = None if step is None else np.full((len(ids), 1), step)
        return dp.compute(ids, np.zeros_like(ids), edits=steps)

    labels = [a for a, info in attribute_catalog(params.attributes).items() if info.level == "identity"]
    candidates = tuple(range(*v.edit_layers(num_ws)))
    shaped, effects = [], []
    for r in regressions:
        edit, rows = shape_edit(r, v.edits[r.attribute], list(v.preserve), directions, render, candidates, labels)
        shaped.append(edit)
        effects += rows
    return shaped, effects


def write_accuracy_csv(path: Path, fits: list[dict[str, Any]]) -> None:
    """dvc plots data: held-out accuracy per direction (empty accuracy = too few examples to fit)."""
    lines = ["direction,accuracy,positives,labelled"]
    for row in fits:
        accuracy = "" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        lines.append(f"{row['attribute']}={row['class']},{accuracy},{row['positives']},{row['labelled']}")
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


def write_layers_csv(path: Path, effects: list[dict[str, Any]]) -> None:
    """dvc plots data: per edited attribute and candidate layer, its change per unit of W and the identity's."""
    lines = ["edit,direction,attribute_per_unit,embedding_change,label_flips,score,chosen"]
    for r in effects:
        numbers = (r["attribute_per_unit"], r["embedding_change"], r["label_flips"], r["score"])
        lines.append(f"{r['attribute']}@{r['layer']},{r['direction']},{','.join(f'{v:.5g}' for v in numbers)},"
                     f"{int(r['chosen'])}")  # fmt: skip
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
