"""Identity-preserving variation: each variant moves its identity's latent along calibrated directions to a
seeded target of each edited attribute (`variation.edits`, e.g. yaw in [-30, 30] degrees), and shrinks the
move when the result stops looking like the person.

The directions are linear regressions of a continuous attribute (attr_yaw from the landmark pose estimator, a
CLIP probability, ...) on W, fitted by the calibrate stage on its own identities: value ~ slope * (n . w) + bias
with n a unit vector. A move to target t from canonical w0 is (t - predicted(w0)) / slope along n, summed over
the edited attributes. The identity check (`variation.min_identity_cosine`) compares the variant's embedding
with its canonical's; a failing move shrinks along a grid of `variation.edit_steps` equal steps down to 0
(each step one batched render of the variants still failing), and the variant keeps the largest scale on
that grid that passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.identities.sampling import EDIT, EditAxis

#: Cosines below this mean "not the same person" for the check, whatever the threshold (no face: no embedding).
NO_FACE_COSINE = -1.0


@dataclass(frozen=True)
class Regression:
    """A continuous attribute as a linear function of w: value ~ slope * (normal . w) + bias; and how an edit
    moves it (set by the calibrate stage): along `edit_normal` (`normal` with the preserved attributes'
    directions projected out) on the ws `layers` that move it most per unit of identity change, at
    `edit_slope` attribute units per unit of W."""

    attribute: str
    normal: np.ndarray  # unit vector [w_dim]
    slope: float  # attribute units per unit of W along `normal`
    bias: float
    r2: float  # on the calibration identities held out of the fit
    edit_normal: np.ndarray | None = None
    layers: tuple[int, ...] | None = None
    edit_slope: float | None = None
    preserved: tuple[str, ...] = ()

    def predict(self, w: np.ndarray) -> np.ndarray:
        return self.slope * (np.asarray(w, np.float64) @ self.normal) + self.bias

    def axis(self, default_layers: tuple[int, ...]) -> EditAxis:
        """The direction and layers an edit of this attribute moves (the fitted ones before calibration chose)."""
        normal = self.normal if self.edit_normal is None else self.edit_normal
        return EditAxis(normal, self.layers if self.layers is not None else default_layers)

    def to_json(self) -> dict[str, Any]:
        out = {
            "attribute": self.attribute,
            "normal": [round(float(x), 7) for x in self.normal],
            "slope": round(self.slope, 7),
            "bias": round(self.bias, 7),
            "r2": round(self.r2, 6),
        }
        if self.edit_normal is not None:
            out |= {
                "edit_normal": [round(float(x), 7) for x in self.edit_normal],
                "layers": list(self.layers or ()),
                "edit_slope": round(float(self.edit_slope or 0.0), 7),
                "preserved": list(self.preserved),
            }
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Regression:
        edit = d.get("edit_normal")
        return cls(
            d["attribute"], np.asarray(d["normal"], np.float64), float(d["slope"]), float(d["bias"]), d["r2"],
            None if edit is None else np.asarray(edit, np.float64),
            None if edit is None else tuple(int(x) for x in d["layers"]),
            None if edit is None else float(d["edit_slope"]), tuple(d.get("preserved", ())),
        )  # fmt: skip


def conditional(normal: np.ndarray, preserved: list[np.ndarray]) -> np.ndarray:
    """`normal` with the span of the preserved directions projected out (InterFaceGAN's conditional
    manipulation; a least-squares projection for several), unit length; its norm before scaling says how much
    of the edit was left."""
    n = np.asarray(normal, np.float64)
    if preserved:
        q, _ = np.linalg.qr(np.stack([np.asarray(p, np.float64) for p in preserved], 1))
        n = n - q @ (q.T @ n)
    return n


def fit_regression(
    attribute: str, w: np.ndarray, values: np.ndarray, holdout: float, regularization: float
) -> Regression | None:
    """Ridge regression of `values` on `w` (NaN values skipped: no face); None with too few values to fit."""
    known = np.isfinite(values)
    x, y = np.asarray(w, np.float64)[known], np.asarray(values, np.float64)[known]
    n_test = round(len(y) * holdout)
    if len(y) - n_test < max(10, x.shape[1] // 4):
        return None
    xt, yt, xv, yv = x[: len(y) - n_test], y[: len(y) - n_test], x[len(y) - n_test :], y[len(y) - n_test :]
    mean_x, mean_y = xt.mean(0), yt.mean()
    xc = xt - mean_x
    beta = np.linalg.solve(xc.T @ xc + regularization * len(yt) * np.eye(x.shape[1]), xc.T @ (yt - mean_y))
    slope = float(np.linalg.norm(beta))
    if slope == 0.0:
        return None
    bias = float(mean_y - beta @ mean_x)
    predicted = xv @ beta + bias
    r2 = float(1.0 - ((yv - predicted) ** 2).sum() / max(((yv - yv.mean()) ** 2).sum(), 1e-12)) if n_test else 0.0
    return Regression(attribute, beta / slope, slope, bias, r2)


def edit_targets(
    seed: int,
    edits: dict[str, tuple[float, float]],
    identities: np.ndarray,
    variants: np.ndarray,
    variants_per_identity: int,
) -> dict[str, np.ndarray]:
    """Per sample and edited attribute, its seeded target in the range (NaN for canonicals). An identity's
    m = variants_per_identity - 1 variants are stratified (a Latin hypercube): for each attribute they take
    one of m equal slices of the range each, in a seeded order, at a seeded point within it, so the variants
    of one person spread over the whole range rather than wherever m independent draws fall."""
    names = sorted(edits)
    m = max(variants_per_identity - 1, 1)
    out = {name: np.full(len(identities), np.nan) for name in names}
    strata: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k, (i, v) in enumerate(zip(identities, variants, strict=True)):
        if v == 0:
            continue
        if int(i) not in strata:
            rng = np.random.default_rng([seed, int(i), 0, EDIT])
            strata[int(i)] = (np.stack([rng.permutation(m) for _ in names]), rng.random((len(names), m)))
        order, jitter = strata[int(i)]
        for a, name in enumerate(names):
            low, high = edits[name]
            u = (order[a, (int(v) - 1) % m] + jitter[a, (int(v) - 1) % m]) / m
            out[name][k] = low + (high - low) * u
    return out


def edit_steps(w0: np.ndarray, targets: dict[str, np.ndarray], regressions: dict[str, Regression]) -> np.ndarray:
    """Per sample and edited attribute (columns in sorted attribute order, as `edit_axes`), the distance in W to
    move along its axis to reach the target from canonical w0 (zero where a target is NaN)."""
    names = sorted(targets)
    steps = np.zeros((len(w0), len(names)), np.float64)
    for k, name in enumerate(names):
        r = regressions[name]
        steps[:, k] = np.nan_to_num((targets[name] - r.predict(w0)) / (r.edit_slope or r.slope))
    return steps


def edit_axes(
    edits: dict[str, Any], regressions: dict[str, Regression], default_layers: tuple[int, ...]
) -> list[EditAxis]:
    """The axes of the edited attributes, in sorted attribute order (the columns of `edit_steps`)."""
    return [regressions[name].axis(default_layers) for name in sorted(edits)]


def edit_scales(steps: int) -> list[float]:
    """The scales an edit tries, largest first: 1, (steps - 1) / steps, ..., 1 / steps, then 0 (no edit)."""
    return [k / steps for k in range(steps, -1, -1)]


def shrink(
    n: int,
    scales: list[float],
    threshold: float,
    evaluate: Callable[[np.ndarray, float], Iterator[tuple[np.ndarray, np.ndarray, Any]]],
) -> Iterator[tuple[np.ndarray, float, np.ndarray, Any, np.ndarray]]:
    """The largest scale on `scales` (descending, ending at 0) at which each of n edits keeps its identity.

    `evaluate(rows, scale)` renders those rows at that scale and yields (rows, cosines, payload) batch by
    batch. Yields (rows kept, scale, their cosines, the batch's payload, the kept positions within the batch)
    as soon as a batch is judged; a row failing every scale but 0 is kept at 0 whatever its cosine."""
    pending = np.arange(n)
    for scale in scales:
        failed = []
        for rows, cos, payload in evaluate(pending, scale):
            ok = (cos >= threshold) | (scale == 0.0)
            failed.append(rows[~ok])
            if ok.any():
                yield rows[ok], scale, cos[ok], payload, np.flatnonzero(ok)
        pending = np.concatenate(failed) if failed else pending[:0]
        if not len(pending):
            return


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two embedding matrices (float16 as stored, computed in float32)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-12), NO_FACE_COSINE).astype(np.float32)
