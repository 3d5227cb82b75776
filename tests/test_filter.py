"""Filter rules: each reason fires on exactly its condition; every filter.* key changes a decision."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

from pipeline.config import FilterParams
from pipeline.curation.filter import RULES, apply_filter
from pipeline.errors import PipelineError

GOOD = {
    "key": "000000000_000", "identity": 0, "variant": 0, "det_prob": 0.999, "n_faces": 1,
    "q_finite": 1.0, "q_face_fraction": 0.2, "q_roll": 2.0, "q_eye_distance": 0.4, "q_nose_position": 0.5,
    "q_landmarks_inside": 1.0, "q_align_residual": 0.02, "q_sharpness": 50.0, "q_brightness": 0.5, "q_clipped": 0.0,
    "q_serfiq": 0.8, "q_disc": 1.5, "q_catchlight_mismatch": 0.0, "q_droplet": 0.02, "q_background_structure": 0.01,
    "q_accessory_asymmetry": 0.05,
}  # fmt: skip
PARAMS = FilterParams(
    min_sharpness=10.0, min_serfiq=0.5, min_disc_logit=0.0, max_catchlight_mismatch=0.9, max_droplet=0.25,
    max_background_structure=0.45, max_accessory_asymmetry=0.4,
)  # fmt: skip


def frame(*changes: dict) -> pd.DataFrame:
    rows = [{**GOOD, "key": f"000000000_{i:03d}", "variant": i, **c} for i, c in enumerate(changes)]
    return pd.DataFrame(rows)


RULE_CASES = [
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
    ({"q_serfiq": 0.01}, "low_quality"),
    ({"q_disc": -3.0}, "unrealistic"),
    ({"q_catchlight_mismatch": 1.0}, "catchlights"),
    ({"q_droplet": 0.4}, "droplet"),
    ({"q_background_structure": 0.5}, "background"),
    ({"q_accessory_asymmetry": 0.6}, "accessories"),
]


@pytest.mark.parametrize(("change", "reason"), [({}, ""), *RULE_CASES])
def test_each_rule(change: dict, reason: str) -> None:
    out = apply_filter(frame(change), PARAMS)
    assert out["reason"].tolist() == [reason]
    assert out["keep"].tolist() == [reason == ""]


def test_every_rule_has_a_case() -> None:
    assert {reason for _, reason in RULE_CASES} == {rule.reason for rule in RULES}


#: key -> (candidate change, value that keeps it, value that rejects it, the reason then).
KEY_CASES: dict[str, tuple[dict[str, Any], Any, Any, str]] = {
    "min_det_prob": ({"det_prob": 0.97}, 0.96, 0.98, "low_det_prob"),
    "max_faces": ({"n_faces": 2}, 2, 1, "multi_face"),
    "min_face_fraction": ({"q_face_fraction": 0.1}, 0.05, 0.15, "small_face"),
    "max_roll_deg": ({"q_roll": 25.0}, 30.0, 20.0, "roll"),
    "max_align_residual": ({"q_align_residual": 0.1}, 0.2, 0.05, "misaligned"),
    "min_sharpness": ({"q_sharpness": 20.0}, 10.0, 30.0, "blurry"),
    "brightness": ({"q_brightness": 0.88}, (0.15, 0.9), (0.15, 0.85), "exposure"),
    "max_clipped": ({"q_clipped": 0.2}, 0.25, 0.1, "exposure"),
    "min_serfiq": ({"q_serfiq": 0.01}, 0.0, 0.9, "low_quality"),
    "min_disc_logit": ({"q_disc": -0.5}, None, 0.0, "unrealistic"),
    "max_catchlight_mismatch": ({"q_catchlight_mismatch": 0.6}, None, 0.5, "catchlights"),
    "max_droplet": ({"q_droplet": 0.3}, 0.35, 0.25, "droplet"),
    "max_background_structure": ({"q_background_structure": 0.2}, None, 0.1, "background"),
    "max_accessory_asymmetry": ({"q_accessory_asymmetry": 0.3}, 0.4, 0.25, "accessories"),
}


@pytest.mark.parametrize("key", sorted(KEY_CASES))
def test_each_filter_key_changes_a_decision(key: str) -> None:
    change, keeps, rejects, reason = KEY_CASES[key]
    df = frame(change)
    assert apply_filter(df, FilterParams(**{key: keeps}))["reason"].tolist() == [""]
    assert apply_filter(df, FilterParams(**{key: rejects}))["reason"].tolist() == [reason]


def test_every_filter_key_has_a_case() -> None:
    assert set(KEY_CASES) == set(FilterParams.model_fields)


def test_missing_discriminator_score_is_an_error_not_a_silent_pass() -> None:
    df = frame({}, {"q_disc": math.nan})
    assert apply_filter(df, FilterParams(min_disc_logit=None))["keep"].tolist() == [True, True]  # off: NaN is fine
    with pytest.raises(PipelineError, match=r"filter\.min_disc_logit: 1 of 2 candidates have no discriminator score"):
        apply_filter(df, FilterParams(min_disc_logit=0.0))


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


def test_an_artifact_rule_over_candidates_without_its_score_names_the_key() -> None:
    """Candidates generated without a scorer cannot be judged by its rule: an error that says what to do."""
    df = frame({}).drop(columns=["q_droplet"])
    assert apply_filter(df, FilterParams())["keep"].tolist() == [True]  # the rule is off: the column is not read
    with pytest.raises(PipelineError, match=r"filter.max_droplet: .*no q_droplet.*'droplets' scorer"):
        apply_filter(df, FilterParams(max_droplet=0.2))
