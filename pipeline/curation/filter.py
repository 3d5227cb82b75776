"""Filter rules: each names a reason code and flags the candidates it rejects (thresholds from `filter.*`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.config import FilterParams
from pipeline.curation.table import CurationWriter
from pipeline.errors import PipelineError
from pipeline.faces.columns import ARTIFACT_COLUMNS, QUALITY_COLUMNS
from pipeline.shards.candidates import candidate_columns, iter_candidates, shard_files

#: Every rule a rejected candidate fails, beside the first one in `reason`.
REASONS_FIELD = pa.field("reasons", pa.list_(pa.string()))
#: Candidate columns the filter reads (no pixels, no embeddings).
FILTER_COLUMNS = ["key", "identity", "variant", "det_prob", "n_faces", *QUALITY_COLUMNS]


def _above(frame: pd.DataFrame, column: str, threshold: float | None) -> np.ndarray:
    """An artifact rule: off (rejects nothing) while its threshold is null."""
    return np.zeros(len(frame), bool) if threshold is None else (frame[column] > threshold).to_numpy()


def artifact_threshold(params: FilterParams, column: str) -> float | None:
    """The `filter.max_*` threshold of an artifact column (None: its rule is off)."""
    return getattr(params, "max_" + column.removeprefix("q_"))


#: Each artifact column's rule: its reason code and what it rejects (threshold `filter.max_<column without q_>`).
ARTIFACT_REASONS = {
    "q_catchlight_mismatch": ("catchlights", "the eyes' highlights differ"),
    "q_droplet": ("droplet", "a glossy blob on the face"),
    "q_background_structure": ("background", "structure in the background"),
    "q_accessory_asymmetry": ("accessories", "earrings or glasses differ left to right"),
}


@dataclass(frozen=True)
class Rule:
    reason: str
    description: str
    rejects: Callable[[pd.DataFrame, FilterParams], np.ndarray]


#: In order: a rejected candidate's `reason` is the first rule it fails; `reasons` lists all of them.
RULES: tuple[Rule, ...] = (
    Rule("non_finite", "generator output had NaN or Inf", lambda d, p: d.q_finite < 1),
    Rule("no_face", "no face detected", lambda d, p: d.det_prob <= 0),
    Rule("low_det_prob", "detector probability < filter.min_det_prob", lambda d, p: d.det_prob < p.min_det_prob),
    Rule("multi_face", "more faces than filter.max_faces", lambda d, p: d.n_faces > p.max_faces),
    Rule(
        "small_face",
        "box area / image < filter.min_face_fraction",
        lambda d, p: d.q_face_fraction < p.min_face_fraction,
    ),
    Rule(
        "bad_landmarks",
        "a landmark outside the box, or the nose not between the eyes",
        lambda d, p: (d.q_landmarks_inside < 1) | (d.q_nose_position <= 0) | (d.q_nose_position >= 1),
    ),
    Rule("roll", "|eye-line roll| > filter.max_roll_deg", lambda d, p: d.q_roll.abs() > p.max_roll_deg),
    Rule(
        "misaligned",
        "alignment residual > filter.max_align_residual",
        lambda d, p: d.q_align_residual > p.max_align_residual,
    ),
    Rule("blurry", "Laplacian variance < filter.min_sharpness", lambda d, p: d.q_sharpness < p.min_sharpness),
    Rule(
        "exposure",
        "brightness outside filter.brightness, or clipped fraction > filter.max_clipped",
        lambda d, p: (
            (d.q_brightness < p.brightness[0]) | (d.q_brightness > p.brightness[1]) | (d.q_clipped > p.max_clipped)
        ),
    ),
    Rule("low_quality", "SER-FIQ quality < filter.min_serfiq", lambda d, p: d.q_serfiq < p.min_serfiq),
    Rule(
        "unrealistic",
        "discriminator logit < filter.min_disc_logit (off when null)",
        lambda d, p: np.zeros(len(d), bool) if p.min_disc_logit is None else d.q_disc < p.min_disc_logit,
    ),
    *(
        Rule(reason, f"{what}: {column} > filter.max_{column.removeprefix('q_')} (off when null)",
             lambda d, p, c=column: _above(d, c, artifact_threshold(p, c)))
        for column, (reason, what) in ARTIFACT_REASONS.items()
    ),
)  # fmt: skip


def artifact_columns_read(params: FilterParams, available: list[str]) -> list[str]:
    """The artifact columns whose rules are on; an error naming the key when the candidates lack one."""
    wanted = [c for c in ARTIFACT_COLUMNS.values() if artifact_threshold(params, c) is not None]
    for column in wanted:
        if column not in available:
            scorer = next(name for name, c in ARTIFACT_COLUMNS.items() if c == column)
            raise PipelineError(
                f"filter.max_{column.removeprefix('q_')}: the candidates have no {column} (they were generated "
                f"without the {scorer!r} scorer); add it to artifacts.scorers and regenerate, or set the threshold "
                "to null"
            )
    return wanted


def unscored(candidates: pd.DataFrame, params: FilterParams) -> int:
    """Candidates a discriminator threshold cannot judge (no q_disc); 0 when the rule is off."""
    return 0 if params.min_disc_logit is None else int(candidates["q_disc"].isna().sum())


def _unscored_error(count: int, total: int) -> PipelineError:
    return PipelineError(
        f"filter.min_disc_logit: {count} of {total} candidates have no discriminator score "
        "(q_disc is empty: the generator file carries no discriminator, or generator.disc_score was false "
        "when they were generated); set filter.min_disc_logit: null, or regenerate with a discriminator"
    )


def apply_filter(candidates: pd.DataFrame, params: FilterParams) -> pd.DataFrame:
    """Keep/reject every candidate: columns key, identity, variant, keep, reason, reasons.

    A discriminator threshold over candidates without a discriminator score is an error, not a silent
    pass (NaN compares false) or a silent rejection of everything."""
    if count := unscored(candidates, params):
        raise _unscored_error(count, len(candidates))
    artifact_columns_read(params, list(candidates.columns))
    return _decide(candidates, params)


def _decide(candidates: pd.DataFrame, params: FilterParams) -> pd.DataFrame:
    failed = np.stack([np.asarray(rule.rejects(candidates, params), dtype=bool) for rule in RULES], axis=1)
    names = np.array([rule.reason for rule in RULES], dtype=object)
    reasons = [list(names[row]) for row in failed]
    return pd.DataFrame(
        {
            "key": candidates["key"].to_numpy(),
            "identity": candidates["identity"].to_numpy(),
            "variant": candidates["variant"].to_numpy(),
            "keep": ~failed.any(axis=1),
            "reason": [r[0] if r else "" for r in reasons],
            "reasons": reasons,
        }
    )


def run_filter(candidates: str | Path, params: FilterParams, out: str | Path) -> CurationWriter:
    """The filter stage: every candidate shard through the rules, one shard in memory at a time.

    Unscored candidates are counted over all shards before the error, so it says how many there are. Every shard
    is first checked against its marker by sha256: the first stage to read the shards after generate catches one
    that changed since (an edited file, a corrupt cache object linked back by DVC)."""
    shard_files(candidates, hashes=True)
    columns = FILTER_COLUMNS + artifact_columns_read(params, candidate_columns(candidates))
    missing = total = 0
    with CurationWriter(out, [REASONS_FIELD]) as writer:
        for shard in iter_candidates(candidates, columns):
            frame = shard.to_pandas()
            total += len(frame)
            missing += unscored(frame, params)
            if not missing:
                writer.write(_decide(frame, params))
        if missing:
            raise _unscored_error(missing, total)
    return writer
