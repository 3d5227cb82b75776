"""Loading params.yaml: read it and its preset, merge them, and validate the result into `Params` with one
error line per problem, each naming its key path."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.schema import Params, _CrossFieldError
from pipeline.errors import ConfigError

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def drop_nulls(data: dict[str, Any]) -> dict[str, Any]:
    """Remove null leaves (null means "take the preset's, or the default, value") and the mappings they empty."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            inner = drop_nulls(value)
            if inner or not value:
                out[key] = inner
        elif value is not None:
            out[key] = value
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Override wins; nested dicts merge key by key, other values (lists too) are replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


#: A params file is a few kilobytes of plain keys: anything far beyond this is not one.
MAX_YAML_BYTES, MAX_YAML_ALIASES, MAX_YAML_DEPTH = 1 << 20, 64, 32


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses more aliases or deeper nesting than a params file has (a billion-laughs file
    expands aliases exponentially in everything that walks it; deep nesting exhausts the recursion limit)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.aliases = self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (*name); a params file needs none")
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels; params are sections of keys")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _read_yaml(path: Path, label: str) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError([f"{label}: {path.stat().st_size:,} bytes; a params file is far smaller (at most 1 MiB)"])
        text = path.read_text()
    except OSError as err:
        raise ConfigError([f"{label}: cannot read {path}: {err.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{label}: not a text file"]) from None
    try:
        loader = _BoundedLoader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([f"{label}: invalid YAML{where}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{label}: must be a mapping of sections, got {type(data).__name__}"])
    return data


def _key(part: Any) -> str:
    """A key path component; anything but a plain name or index is quoted so the path stays unambiguous."""
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*|\d+", text) else repr(text)


def _describe(error: dict[str, Any], model: type[BaseModel]) -> tuple[str, str, str]:
    """(key path, what is wrong, ', got ...' suffix) for one pydantic error."""
    loc = [str(p) for p in error["loc"]]
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        valid = _valid_keys(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"
        return ".".join(map(_key, loc)), f"unknown key{hint}", ""
    if kind == "value_error" and isinstance(ctx.get("error"), _CrossFieldError):
        cross = ctx["error"]
        return cross.path, str(cross), ""
    bounds = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    if kind in bounds:
        message = f"must be {symbols[bounds[kind]]} {ctx[bounds[kind]]}"
    elif kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
    else:
        message = error["msg"][0].lower() + error["msg"][1:]
    suffix = "" if kind in ("missing", "value_error") else f", got {error.get('input')!r}"
    return ".".join(map(_key, _collapse_union(loc))) or "(top level)", message, suffix


def _collapse_union(loc: list[str]) -> list[str]:
    """Drop pydantic's union-branch labels (e.g. 'int', "literal['auto']") from a key path."""
    labels = {"int", "float", "str", "bool", "constrained-int", "constrained-float", "constrained-str", "list", "tuple"}
    return [p for p in loc if not (p in labels or p.startswith(("literal[", "function-")))]


def _valid_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def validate_params(raw: dict[str, Any]) -> Params:
    """Validate merged params; raise ConfigError with one line per problem."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        grouped: dict[str, tuple[list[str], str]] = {}
        for e in err.errors():
            path, message, suffix = _describe(e, Params)
            messages, _ = grouped.setdefault(path, ([], suffix))
            if message not in messages:
                messages.append(message)
        lines = [f"{path}: {' or '.join(msgs)}{suffix}" for path, (msgs, suffix) in sorted(grouped.items())]
        raise ConfigError(lines) from None


def load_params(path: str | Path = "params.yaml", configs_dir: Path | None = None) -> Params:
    """Read params.yaml, merge its non-null values over configs/<preset>.yaml, validate everything."""
    configs_dir = configs_dir or CONFIGS_DIR
    user = _read_yaml(Path(path), str(path))
    preset = user.get("preset", Params.model_fields["preset"].default)
    if not isinstance(preset, str) or not preset:
        raise ConfigError([f"preset: must be the name of a file in configs/, got {preset!r}"])
    preset_file = configs_dir / f"{preset}.yaml"
    if not preset_file.is_file():
        names = sorted(p.stem for p in configs_dir.glob("*.yaml"))
        raise ConfigError([f"preset: unknown preset {preset!r} (available: {', '.join(names)})"])
    merged = deep_merge(_read_yaml(preset_file, f"configs/{preset}.yaml"), drop_nulls(user))
    merged["preset"] = preset
    return validate_params(merged)
