"""What a candidate shard's bytes depend on, so a shard is reused exactly when recomputing it would give the
same bytes: the params that shape it, the calibration it read, the weights, precision and JPEG encoder, and
an explicit version of the code that makes it — not the code's source text, so an upgrade that changes no
output byte keeps every shard.

tests/test_golden.py renders small shards of every latent plan (and a calibration) and compares them with
the golden recorded for these versions: a change that alters a byte fails there until its version is
bumped and the golden recorded again (`uv run python -m tests.golden_shards --record`).
"""

from __future__ import annotations

import hashlib

from pipeline.config import Params

_DEFAULTS = Params()

#: Bump when candidate bytes change (the golden test says when); every older shard is then recomputed.
GENERATION_VERSION = 2
#: Bump when the calibrate stage's fitted directions change; its cached fit is then redone.
CALIBRATION_VERSION = 2

#: Params sections that shape a candidate shard's bytes (identities.count only decides how many shards).
SHAPING_SECTIONS = (
    "seed", "generator", "identities.images_per_identity", "identities.oversample",
    "identities.shard_size", "identities.separation", "identities.separation_tries", "variation", "detect",
    "align", "embed", "attributes",
)  # fmt: skip
#: Left out of a shard's fingerprint: the weights enter by their sha256 (`models`), not by where the file lies,
#: so moving a checkout or a weights file recomputes nothing.
NOT_SHAPING = ("generator.model",)
#: Shaping keys added with an optional feature: each enters a fingerprint only when set away from its default, so
#: a shard or a fit made before the feature existed (or without it) stays valid.
OPTIONAL_SHAPING = ("artifacts",)
OPTIONAL_CALIBRATION = ("artifacts.plant",)
#: Params sections the calibrate stage's fit depends on.
CALIBRATION_SECTIONS = (
    "seed", "generator", "attributes", "calibrate", "detect", "align", "embed", "variation.edits", "variation.preserve",
    "variation.edit_start", "variation.edit_stop", "variation.mix", "variation.mix_start",
)  # fmt: skip


def _sha256(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _set(params: Params, keys: tuple[str, ...]) -> list[str]:
    """Fingerprints of the optional `keys` that differ from their defaults."""
    return [
        f"{key} {mine}" for key in keys
        if (mine := params.section_fingerprint(key)) != _DEFAULTS.section_fingerprint(key)
    ]  # fmt: skip


def shard_fingerprint(params: Params, calibration_json: str, models: list[str]) -> str:
    """The fingerprint every shard of a run carries: shaping params, the calibration's content
    (`Calibration.fingerprint_json`), what of the models shapes bytes (`DeviceModels.shaping`), the version."""
    return _sha256(
        [
            params.section_fingerprint(*SHAPING_SECTIONS, without=NOT_SHAPING),
            calibration_json,
            *models,
            f"generation {GENERATION_VERSION}",
            *_set(params, OPTIONAL_SHAPING),
        ]
    )


def calibration_fingerprint(params: Params, attributes: list[str]) -> str:
    """The calibrate stage's cache key: its params, the attributes it fits, the versions of the code that
    renders, labels and fits (weights enter through `generator` and the lock the weights stage keeps)."""
    return _sha256(
        [
            params.section_fingerprint(*CALIBRATION_SECTIONS),
            ",".join(attributes),
            f"generation {GENERATION_VERSION}",
            f"calibration {CALIBRATION_VERSION}",
            *_set(params, OPTIONAL_CALIBRATION),
        ]
    )
