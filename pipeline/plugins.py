"""Params checked against the plug-in registries, right after the schema: names of generators, detectors,
embedders, estimators and executors, and balance targets against the estimators' attribute catalog.

`pipeline.config` stays pure schema (nothing imports a registry through it); this is the one place
that knows every registry. `load_checked_params` is what a stage calls before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.config import Params, load_params
from pipeline.errors import ConfigError
from pipeline.registry import UnknownNameError


def _unknown(check: Callable[[str], object], name: str) -> str | None:
    """The registry's own error for `name` (it lists the valid names), or None when `check(name)` passes."""
    try:
        check(name)
    except UnknownNameError as err:
        return str(err)
    return None


def name_problems(params: Params) -> list[str]:
    """One line per plug-in name that no registry knows, each with the valid names."""
    from pipeline.faces.attributes import ATTRIBUTES, load_prompt_set
    from pipeline.faces.detect import DETECTORS
    from pipeline.faces.embed import EMBEDDERS
    from pipeline.generators import require_known_source
    from pipeline.report.judge import JUDGES
    from pipeline.runtime.executors import EXECUTORS

    found: dict[str, str | None] = {
        "generator.model": _unknown(require_known_source, params.generator.model),
        "detect.model": _unknown(DETECTORS.get, params.detect.model),
        "embed.model": _unknown(EMBEDDERS.get, params.embed.model),
        "runtime.executor": _unknown(EXECUTORS.get, params.runtime.executor),
        "judge.model": None if params.judge.model is None else _unknown(JUDGES.get, params.judge.model),
    }
    estimators = [_unknown(ATTRIBUTES.get, n) for n in params.attributes.estimators]
    found["attributes.estimators"] = next((e for e in estimators if e), None)
    for name in params.attributes.clip_attributes:
        try:
            load_prompt_set(name)
        except ValueError as err:
            found["attributes.clip_attributes"] = str(err)
            break
    return [f"{path}: {message}" for path, message in found.items() if message]


def catalog_problems(params: Params) -> list[str]:
    """Rules over the attributes the estimators label: generator-specific estimators, calibrate.attributes,
    balance.targets (attribute, classes, shares) and what steering needs; and a discriminator for q_disc."""
    from pipeline.faces.attributes import attribute_catalog
    from pipeline.generators import GENERATORS

    problems = []
    if params.filter.min_disc_logit is not None and params.generator.model in GENERATORS:
        problems.append(
            f"filter.min_disc_logit: the built-in {params.generator.model!r} generator has no discriminator, so no "
            "candidate has a q_disc score; set filter.min_disc_logit: null"
        )
    if "smoke" in params.attributes.estimators and params.generator.model != "smoke":
        return [*problems, "attributes.estimators: smoke labels only the smoke generator's faces"]
    catalog = attribute_catalog(params.attributes)
    listing = f"labelled by attributes.estimators: {', '.join(catalog) or 'none'}"
    for name in params.calibrate.attributes or []:
        if name not in catalog:
            problems.append(f"calibrate.attributes: unknown attribute {name!r} ({listing})")
    for name, shares in params.balance.targets.items():
        path = f"balance.targets.{name}"
        if name not in catalog:
            problems.append(f"{path}: no estimator labels {name!r} ({listing})")
            continue
        classes = catalog[name].classes
        unknown = [c for c in shares if c not in classes]
        problems += [f"{path}.{c}: unknown class (classes of {name}: {', '.join(classes)})" for c in unknown]
        total = sum(shares.values())
        if not unknown and (total > 1 + 1e-9 or (len(shares) == len(classes) and abs(total - 1) > 1e-9)):
            listed = ", ".join(f"{k} {v:g}" for k, v in shares.items())
            problems.append(
                f"{path}: proportions must sum to 1 (classes left out share the rest), got {total:g} ({listed})"
            )
    from pipeline.faces.attributes import continuous_attributes

    values = continuous_attributes(params.attributes)
    for name in params.variation.edits:
        if name not in values:
            problems.append(
                f"variation.edits.{name}: no estimator writes a continuous attr_{name} "
                f"(continuous attributes of attributes.estimators: {', '.join(values) or 'none'})"
            )
    fitted = params.calibrate.attributes
    for name in params.variation.preserve:
        if name not in catalog or catalog[name].level != "identity":
            levels = ", ".join(n for n, i in catalog.items() if i.level == "identity") or "none configured"
            problems.append(f"variation.preserve: {name!r} is not an identity-level attribute ({levels})")
        elif fitted is not None and name not in fitted:
            problems.append(
                f"variation.preserve: {name!r} needs a calibrated direction: add it to calibrate.attributes"
            )
    if params.balance.mode == "steer" and not any(
        catalog[n].level == "identity" for n in params.balance.targets if n in catalog
    ):
        levels = ", ".join(n for n, i in catalog.items() if i.level == "identity") or "none configured"
        problems.append(
            "balance.mode: steer moves each identity's latent, so it needs a target on an identity-level "
            f"attribute ({levels})"
        )
    return problems


def check_plugins(params: Params) -> Params:
    """`params` unchanged, or ConfigError with one line per problem (names first: the catalog needs them)."""
    problems = name_problems(params)
    if not problems:
        problems = catalog_problems(params)
    if problems:
        raise ConfigError(sorted(problems))
    return params


def load_checked_params(path: str | Path = "params.yaml", configs_dir: Path | None = None) -> Params:
    """params.yaml over its preset, validated by the schema and then against the registries."""
    return check_plugins(load_params(path, configs_dir))
