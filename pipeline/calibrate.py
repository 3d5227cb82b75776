"""Calibrate: one linear direction in W space per (attribute, class), InterFaceGAN style.

A calibration sample of identities (their own seed stream, never dataset identities) is
generated and labelled by the estimators; an L2-regularised logistic regression per class
(one vs. rest) on the canonical w gives the boundary's unit normal and offset, and its
accuracy on held-out identities says how far the direction can be trusted for steering.
"""

from __future__ import annotations

import hashlib
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
from pipeline.fingerprint import code_fingerprint
from pipeline.identities.variation import Regression, fit_regression
from pipeline.shards.io import write_json_atomic

log = logging.getLogger(__name__)

DIRECTIONS = "directions.json"
STEER_PLAN = "steer.json"
#: Mixed into params.seed so calibration identities never coincide with dataset identities.
CALIBRATION_STREAM = 0xCA1B
MIN_PER_CLASS = 5


def fit_attributes(params: Params) -> list[str]:
    """`calibrate.attributes`, else every identity-level attribute the estimators label."""
    if params.calibrate.attributes is not None:
        return list(params.calibrate.attributes)
    return [n for n, info in attribute_catalog(params).items() if info.level == "identity"]


def calibration_seed(seed: int) -> int:
    return int(np.random.SeedSequence([seed, CALIBRATION_STREAM]).generate_state(1, np.uint32)[0])


def fit_fingerprint(params: Params) -> str:
    parts = [
        params.section_fingerprint("seed", "generator", "attributes", "calibrate", "detect", "variation.edits"),
        json.dumps(fit_attributes(params)),
        code_fingerprint(__file__),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


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
    from pipeline.identities.sampling import make_ws

    continuous = continuous or []
    catalog_of = {name: ATTRIBUTES.get(name).catalog(params) for name in params.attributes.estimators}  # type: ignore[attr-defined]
    values_of = {name: ATTRIBUTES.get(name).continuous(params) for name in params.attributes.estimators}  # type: ignore[attr-defined]
    needed = [
        name for name in params.attributes.estimators
        if set(catalog_of[name]) & set(attributes) or set(values_of[name]) & set(continuous)
    ]  # fmt: skip
    subset = params.model_copy(
        update={
            "seed": calibration_seed(params.seed),
            "attributes": params.attributes.model_copy(update={"estimators": needed}),
        }
    )
    analyzer = AttributeAnalyzer(subset, generator, device, **context)
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
        ws = make_ws(generator, subset, ids, np.zeros_like(ids), device)
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


def directions_to_json(directions: list[Direction]) -> list[dict[str, Any]]:
    return [
        {"attribute": d.attribute, "class": d.cls, "normal": [round(float(x), 7) for x in d.normal],
         "bias": round(d.bias, 7), "accuracy": round(d.accuracy, 6)}
        for d in directions
    ]  # fmt: skip


def load_directions(folder: Path | None) -> list[Direction]:
    """The calibrated directions in `folder` (none when the folder or file is absent)."""
    path = folder / DIRECTIONS if folder else None
    if path is None or not path.is_file():
        return []
    data = json.loads(path.read_text())
    return [
        Direction(d["attribute"], d["class"], np.asarray(d["normal"], np.float64), float(d["bias"]), d["accuracy"])
        for d in data["directions"]
    ]


def load_steer_plan(folder: Path | None) -> dict[str, Any] | None:
    path = folder / STEER_PLAN if folder else None
    if path is None or not path.is_file():
        return None
    plan = json.loads(path.read_text())
    return plan if plan.get("mode") == "steer" else None


def steer_plan(params: Params, directions: list[Direction]) -> dict[str, Any]:
    """What generate needs to steer: identity-level targets that have directions; {"mode": "select"} otherwise."""
    if params.balance.mode != "steer":
        return {"mode": "select"}
    catalog = attribute_catalog(params)
    fitted = {d.attribute for d in directions}
    targets = {n: t for n, t in balance_targets(params).items() if catalog[n].level == "identity" and n in fitted}
    missing = [n for n, t in balance_targets(params).items() if catalog[n].level == "identity" and n not in fitted]
    if missing:
        log.warning("steer: no calibrated direction for %s; those targets are met by selection only", missing)
    b = params.balance
    return {"mode": "steer", "targets": targets, "margin": b.steer_margin, "chunk": b.steer_chunk}


def write_calibration(
    out_dir: Path,
    fingerprint: str,
    directions: list[Direction],
    rows: list[dict[str, Any]],
    samples: int,
    regressions: list[Regression] | None = None,
) -> None:
    write_json_atomic(
        out_dir / DIRECTIONS,
        {
            "fingerprint": fingerprint,
            "samples": samples,
            "fits": rows,
            "directions": directions_to_json(directions),
            "regressions": [r.to_json() for r in regressions or []],
        },
    )


def load_regressions(folder: Path | None) -> dict[str, Regression]:
    """The calibrated regressions of continuous attributes in `folder`, by attribute (none when absent)."""
    path = folder / DIRECTIONS if folder else None
    if path is None or not path.is_file():
        return {}
    return {r["attribute"]: Regression.from_json(r) for r in json.loads(path.read_text()).get("regressions", [])}


def cached_fingerprint(out_dir: Path) -> str | None:
    try:
        return json.loads((out_dir / DIRECTIONS).read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def run_calibrate(
    params: Params,
    out_dir: Path,
    weights_dir: Path | None = None,
    lock_path: Path | None = None,
    plots_csv: Path | None = None,
) -> dict[str, Any]:
    """Fit (or reuse, when nothing they depend on changed) the directions; write the steer plan and plot data."""
    from pipeline.generators import load_generator
    from pipeline.generators.synthesis import synthesize, to_uint8
    from pipeline.runtime.device import batch_size, effective_precision, resolve_devices

    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = fit_fingerprint(params)
    attributes = fit_attributes(params)
    if cached_fingerprint(out_dir) == fingerprint:
        log.info("calibrate: directions are up to date")
    elif not attributes and not params.variation.edits:
        write_calibration(out_dir, fingerprint, [], [], 0)
    else:
        device = resolve_devices(params.runtime)[0]
        g = params.generator
        generator = load_generator(g.model, device, g.resolution, weights_dir, lock_path)
        precision = effective_precision(params.runtime, device)

        def render(ws: torch.Tensor) -> torch.Tensor:
            return to_uint8(synthesize(generator, ws, precision, g.noise_mode)).permute(0, 2, 3, 1)

        edited = sorted(params.variation.edits)
        w, labels, values = label_calibration_sample(
            params, generator, render, device, attributes, batch_size(params.runtime, device), edited,
            weights_dir=weights_dir, lock_path=lock_path,
        )  # fmt: skip
        catalog = attribute_catalog(params)
        c = params.calibrate
        directions, rows = fit_directions(
            w, labels, {a: catalog[a].classes for a in attributes}, c.holdout, c.regularization
        )
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
        write_calibration(out_dir, fingerprint, directions, rows, len(w), regressions)
        for d in directions:
            log.info("calibrate: %s=%s held-out accuracy %.3f", d.attribute, d.cls, d.accuracy)
    directions = load_directions(out_dir)
    plan = steer_plan(params, directions)
    write_json_atomic(out_dir / STEER_PLAN, plan)
    summary = json.loads((out_dir / DIRECTIONS).read_text())
    if plots_csv is not None:
        write_accuracy_csv(plots_csv, summary["fits"])
    return summary | {"steer": plan}


def write_accuracy_csv(path: Path, fits: list[dict[str, Any]]) -> None:
    """dvc plots data: held-out accuracy per direction (empty accuracy = too few examples to fit)."""
    from pipeline.shards.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["direction,accuracy,positives,labelled"]
    for row in fits:
        accuracy = "" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        lines.append(f"{row['attribute']}={row['class']},{accuracy},{row['positives']},{row['labelled']}")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
