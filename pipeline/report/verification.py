"""Verification rates from genuine and impostor similarity scores: what face-recognition benchmarks report."""

from __future__ import annotations

import numpy as np

#: Bin edges of every cosine histogram in the reports.
HISTOGRAM_EDGES = np.linspace(-1, 1, 101)


def verification_rates(genuine: np.ndarray, impostor: np.ndarray, far_target: float = 1e-3) -> dict[str, float]:
    """Equal-error rate (the threshold where the share of impostor pairs above it equals the share of genuine
    pairs below it) and the true-accept rate at a false-accept rate of `far_target` (the impostors' upper
    quantile as threshold; needs at least 1 / far_target impostor pairs to mean much)."""
    thresholds = np.linspace(-1, 1, 2001)
    far = 1.0 - np.searchsorted(np.sort(impostor), thresholds, side="right") / len(impostor)
    frr = np.searchsorted(np.sort(genuine), thresholds, side="right") / len(genuine)
    k = int(np.argmin(np.abs(far - frr)))
    at = float(np.quantile(impostor, 1.0 - far_target, method="higher"))
    return {
        "eer": float((far[k] + frr[k]) / 2),
        "eer_threshold": float(thresholds[k]),
        "tar_at_far_1e-3": float((genuine > at).mean()),
        "far_1e-3_threshold": at,
    }
