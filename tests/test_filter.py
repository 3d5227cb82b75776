"""Filter rules: each reason fires on exactly its condition; the first failing rule is the reason."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import FilterParams
from pipeline.filter import RULES, apply_filter

GOOD = {
    "key": "000000000_000", "identity": 0, "variant": 0, "det_prob": 0.999, "n_faces": 1,
    "q_finite": 1.0, "q_face_fraction": 0.2, "q_roll": 2.0, "q_eye_distance": 0.4, "q_nose_position": 0.5,
    "q_landmarks_inside": 1.0, "q_align_residual": 0.02, "q_sharpness": 50.0, "q_brightness": 0.5, "q_clipped": 0.0,
}  # fmt: skip
PARAMS = FilterParams(min_sharpness=10.0)


def frame(*changes: dict) -> pd.DataFrame:
    rows = [{**GOOD, "key": f"000000000_{i:03d}", "variant": i, **c} for i, c in enumerate(changes)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, ""),
        ({"q_finite": 0.0}, "non_finite"),
        ({"det_prob": 0.0, "n_faces": 0}, "no_face"),
        ({"det_prob": 0.9}, "low_det_prob"),
        ({"n_faces": 2}, "multi_face"),
        ({"q_face_fraction": 0.01}, "small_face"),
        ({"q_landmarks_inside": 0.0}, "bad_landmarks"),
        ({"q_nose_position": 1.2}, "bad_landmarks"),
        ({"q_roll": -45.0}, "roll"),
        ({"q_align_residual": 0.5}, "misaligned"),
        ({"q_sharpness": 1.0}, "blurry"),
        ({"q_brightness": 0.02}, "exposure"),
        ({"q_clipped": 0.6}, "exposure"),
    ],
)
def test_each_rule(change: dict, reason: str) -> None:
    out = apply_filter(frame(change), PARAMS)
    assert out["reason"].tolist() == [reason]
    assert out["keep"].tolist() == [reason == ""]


def test_first_reason_and_all_reasons() -> None:
    out = apply_filter(frame({"det_prob": 0.5, "q_roll": 40.0, "q_sharpness": 0.0}), PARAMS)
    assert out.loc[0, "reason"] == "low_det_prob"
    assert list(out.loc[0, "reasons"]) == ["low_det_prob", "roll", "blurry"]


def test_threshold_moves_counts() -> None:
    df = frame(*({"det_prob": p} for p in (0.95, 0.97, 0.99, 0.999)))
    assert apply_filter(df, FilterParams(min_det_prob=0.96))["keep"].sum() == 3
    assert apply_filter(df, FilterParams(min_det_prob=0.995))["keep"].sum() == 1


def test_reason_codes_unique() -> None:
    names = [r.reason for r in RULES]
    assert len(names) == len(set(names))
