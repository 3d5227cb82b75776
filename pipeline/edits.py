"""How an identity-preserving edit moves, fixed by the calibrate stage: which direction and which ws layers.

A regression of a continuous attribute on w gives the direction that changes it most; used as it is, on every
layer, it also moves whatever else lives along that direction on those layers (on the smoke renderer, the
yaw direction is the skin-tone direction of the identity layer). Two steps keep the person:

- **layer choice**: the edit is applied to one candidate layer at a time (`variation.edit_start/edit_stop`),
  rendering a fixed set of calibration identities through the face stack; per layer, the attribute's change
  per unit of W and the identity change (1 - cosine of the curation embedding, plus the share of identity-level
  labels that flip) are measured, and the edit keeps the layers that move the attribute most per unit of
  identity change;
- **conditional direction**: if, on those layers, the edit still flips the label of an attribute to hold
  (`variation.preserve`) for more than 1% of the identities, that attribute's calibrated directions are
  projected out of the edit's (InterFaceGAN's conditional manipulation: held fixed by construction in the
  linear model) and the layers are chosen again. An attribute the chosen layers do not move is not projected
  out: its directions are fitted on the whole w, and projecting them out of a layer that does not carry them
  would only bend the edit (on the smoke renderer, yaw and skin tone share a coordinate of w, one on each
  layer).

The edit's slope is measured on its final layers.

The identity check of the generate stage stays the final guard.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.faces.attributes import Direction
from pipeline.identities.sampling import EditAxis
from pipeline.identities.variation import Regression, conditional, cosines

log = logging.getLogger(__name__)

#: Calibration identities rendered per measurement.
MEASURED_IDENTITIES = 64
#: A layer is kept when its attribute change per unit of identity change is at least this share of the best
#: layer's, and its attribute change at least MIN_SHARE of the largest.
SCORE_SHARE, MIN_SHARE = 0.5, 0.1
#: Below this norm the edit's direction lay (almost) within the preserved attributes' span.
MIN_LEFT = 0.1


def preserved_normals(directions: list[Direction], preserve: list[str]) -> list[np.ndarray]:
    return [d.normal for d in directions if d.attribute in preserve]


def effect(attribute: str, base: dict[str, Any], moved: dict[str, Any], delta: float, labels: list[str]) -> dict:
    """Per unit of W moved: the attribute's median change; the identity's change (1 - embedding cosine over
    faces found both times, plus the share of identity-level labels that flipped)."""
    v0, v1 = np.asarray(base[f"attr_{attribute}"], np.float64), np.asarray(moved[f"attr_{attribute}"], np.float64)
    both = np.isfinite(v0) & np.isfinite(v1)
    per_unit = float(np.median(v1[both] - v0[both]) / delta) if both.sum() >= 5 else 0.0
    found = (np.asarray(base["det_prob"]) > 0) & (np.asarray(moved["det_prob"]) > 0)
    cos = cosines(np.stack(moved["embedding"])[found], np.stack(base["embedding"])[found])
    drift = float(np.mean(1.0 - cos)) if found.any() else 1.0
    flips = [float(np.mean(np.asarray(base[f"attr_{a}"]) != np.asarray(moved[f"attr_{a}"]))) for a in labels]
    return {"attribute_per_unit": per_unit, "embedding_change": drift, "label_flips": float(np.mean(flips or [0.0]))}


def choose_layers(rows: list[dict]) -> tuple[int, ...]:
    """The layers that move the attribute most per unit of identity change (see SCORE_SHARE, MIN_SHARE)."""
    best_move = max((r["attribute_per_unit"] for r in rows), default=0.0)
    for r in rows:
        change = r["embedding_change"] + r["label_flips"]
        r["score"] = r["attribute_per_unit"] / max(change, 1e-2) if r["attribute_per_unit"] > 0 else 0.0
    best = max((r["score"] for r in rows), default=0.0)
    chosen = [
        r["layer"] for r in rows
        if r["score"] > 0 and r["score"] >= SCORE_SHARE * best and r["attribute_per_unit"] >= MIN_SHARE * best_move
    ]  # fmt: skip
    for r in rows:
        r["chosen"] = r["layer"] in chosen
    return tuple(chosen)


#: A preserved attribute whose label the edit flips for more than this share of identities is projected out.
MAX_PRESERVED_FLIPS = 0.01


def shape_edit(
    r: Regression,
    span: tuple[float, float],
    preserve: list[str],
    directions: list[Direction],
    render: Any,
    candidates: tuple[int, ...],
    labels: list[str],
) -> tuple[Regression, list[dict]]:
    """The regression with its edit's direction, layers and slope, and one row per measurement (for
    directions.json and the plot). `render(axis, step)` returns the face-stack columns of the measured
    identities moved `step` along `axis` (None: not moved)."""
    base = render(EditAxis(r.normal, candidates), None)
    measure = _Measure(r, span, base, render, candidates, labels)
    normal, projected = r.normal, []
    chosen, flips, slope = measure.layers(normal, "fitted")
    moving = [p for p in preserve if flips.get(p, 0.0) > MAX_PRESERVED_FLIPS]
    if moving:
        left = conditional(r.normal, preserved_normals(directions, moving))
        if np.linalg.norm(left) < MIN_LEFT:
            raise PipelineError(
                f"variation.edits.{r.attribute}: its direction lies within those of {moving} (variation.preserve), "
                "which it moves on every layer it can edit: nothing of it is left to edit"
            )
        normal, projected = left / np.linalg.norm(left), moving
        chosen, flips, slope = measure.layers(normal, "conditional")
    log.info("calibrate: %s edits layers %s at %.3g per W unit%s", r.attribute, list(chosen), slope,
             f" (conditional on {projected})" if projected else "")  # fmt: skip
    return replace(r, edit_normal=normal, layers=chosen, edit_slope=slope, preserved=tuple(projected)), measure.rows


class _Measure:
    """Renders one edit's moves and keeps a row per measurement."""

    def __init__(self, r: Regression, span: tuple[float, float], base: dict, render: Any, candidates, labels):
        self.r, self.base, self.render, self.candidates, self.labels = r, base, render, candidates, labels
        self.span = span
        self.rows: list[dict] = []

    def layers(self, normal: np.ndarray, kind: str) -> tuple[tuple[int, ...], dict[str, float], float]:
        """Layers chosen for `normal`, the preserved labels' flip rates and the slope on those layers."""
        r = self.r
        expected = r.slope * float(r.normal @ normal)  # the linear model's change per unit along `normal`
        delta = 0.5 * (self.span[1] - self.span[0]) / max(abs(expected), 1e-9)
        rows = []
        for layer in self.candidates:
            moved = self.render(EditAxis(normal, (layer,)), delta)
            rows.append({"attribute": r.attribute, "direction": kind, "layer": layer,
                         **effect(r.attribute, self.base, moved, delta, self.labels)})  # fmt: skip
        chosen = choose_layers(rows)
        self.rows += rows
        if not chosen:
            raise PipelineError(
                f"variation.edits.{r.attribute}: no layer among {list(self.candidates)} moves it "
                "(variation.edit_start / edit_stop choose the candidates)"
            )
        moved = self.render(EditAxis(normal, chosen), delta)
        slope = effect(r.attribute, self.base, moved, delta, [])["attribute_per_unit"]
        if slope <= 0:
            raise PipelineError(f"variation.edits.{r.attribute}: moving layers {list(chosen)} does not change it")
        flips = {a: float(np.mean(np.asarray(self.base[f"attr_{a}"]) != np.asarray(moved[f"attr_{a}"])))
                 for a in self.labels}  # fmt: skip
        return chosen, flips, slope
