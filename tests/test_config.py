"""Params validation: every problem is one line naming its key path; presets merge under params.yaml."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import available_presets, deep_merge, load_params, validate_params
from pipeline.errors import ConfigError
from pipeline.plugins import check_plugins

from .conftest import REPO


def problems(raw: dict) -> list[str]:
    """The lines a stage prints for `raw`: the schema's, then the registries' (`check_plugins`)."""
    with pytest.raises(ConfigError) as info:
        check_plugins(validate_params(raw))
    return info.value.problems


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"identities": {"count": -5}}, "identities.count: must be > 0, got -5"),
        ({"identities": {"count": "many"}}, "identities.count: "),
        ({"identities": {"cuont": 5}}, "identities.cuont: unknown key (did you mean 'count'?)"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"filter": {"min_det_prob": 1.5}}, "filter.min_det_prob: must be <= 1.0, got 1.5"),
        ({"filter": {"brightness": [0.9, 0.1]}}, "filter.brightness: must be [low, high] with low < high"),
        ({"generator": {"model": "stylegan9"}}, "generator.model: unknown generator 'stylegan9' (available:"),
        ({"generator": {"noise_mode": "loud"}}, "generator.noise_mode: "),
        ({"runtime": {"executor": "slurm"}}, "runtime.executor: unknown executor 'slurm'"),
        ({"detect": {"model": "retina"}}, "detect.model: unknown detector 'retina' (available: mtcnn"),
        ({"embed": {"model": "arcface"}}, "embed.model: unknown embedder 'arcface' (available: inception_resnet_v1)"),
        ({"attributes": {"estimators": ["pose", "mood"]}}, "attributes.estimators: unknown attribute estimator 'mood'"),
        ({"attributes": {"clip_attributes": ["mood"]}}, "attributes.clip_attributes: no attribute file"),
        (
            {"filter": {"min_serfiq": 0.5}, "embed": {"serfiq_passes": 1}},
            "filter.min_serfiq: needs embed.serfiq_passes >= 2",
        ),
        (
            {"filter": {"min_disc_logit": 0.0}},
            "filter.min_disc_logit: needs generator.disc_score: true",
        ),  # off by default
        (
            {"filter": {"min_disc_logit": 0.0}, "generator": {"disc_score": True}},
            "filter.min_disc_logit: the built-in 'smoke' generator has no discrim",
        ),
        ({"runtime": {"batch_size": 0}}, "runtime.batch_size: "),
        ({"export": {"formats": []}}, "export.formats: "),
        ({"export": {"formats": ["parquet", "parquet"]}}, "export.formats: must not repeat a value"),
        (
            {"variation": {"mix_start": 4, "mix_stop": 2}},
            "variation.mix_stop: must be > variation.mix_start (4), got 2",
        ),
        ({"dedup": {"max_identity_similarity": 2}}, "dedup.max_identity_similarity: must be <= 1.0, got 2"),
        (
            {"identities": {"count": 10}, "dataset": {"identities": 20}},
            "dataset.identities: must be <= identities.count (10), got 20",
        ),
        ({"seed": -1}, "seed: must be >= 0, got -1"),
    ],
)
def test_bad_value_names_key_path(raw: dict, expected: str) -> None:
    lines = problems(raw)
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines


def test_every_problem_reported_at_once() -> None:
    lines = problems({"identities": {"count": 0, "shard_size": -1}, "filter": {"max_faces": 0}})
    assert [line.split(":")[0] for line in lines] == ["filter.max_faces", "identities.count", "identities.shard_size"]


def test_union_errors_collapse_to_one_line() -> None:
    lines = problems({"runtime": {"batch_size": "huge"}})
    assert len(lines) == 1 and lines[0].startswith("runtime.batch_size: ") and lines[0].endswith("got 'huge'")


def test_deep_merge_overrides_leaves_and_keeps_siblings() -> None:
    merged = deep_merge({"a": {"x": 1, "y": 2}, "b": [1, 2]}, {"a": {"y": 3}, "b": [9]})
    assert merged == {"a": {"x": 1, "y": 3}, "b": [9]}


def test_params_override_preset(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "tiny.yaml").write_text(
        yaml.safe_dump({"identities": {"count": 40, "shard_size": 8}, "dataset": {"identities": 4}})
    )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"preset": "tiny", "identities": {"count": 30}, "filter": {}}))
    params = load_params(params_file, configs)
    assert params.identities.count == 30  # params.yaml wins
    assert params.identities.shard_size == 8  # preset value kept
    assert params.dataset.identities == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "preset: nope\n",
            "preset: unknown preset 'nope' (available: ffhq-10k50, ffhq-20k50, ffhq1024-sg3, ffhq256, million, smoke)",
        ),
        ("identities: {count: [\n", "params.yaml: invalid YAML at line"),
        ("- a\n- b\n", "params.yaml: must be a mapping of sections, got list"),
    ],
)
def test_params_file_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert info.value.problems[0].startswith(expected.replace("params.yaml", str(path)))  # names the file given


def test_repo_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.preset == "ffhq256" and params.generator.model == "stylegan2-ffhq-256x256"
    assert params.embed.allow_random is False  # production never silently uses random embeddings


def test_variants_per_identity_rounds_up() -> None:
    params = validate_params(
        {"identities": {"images_per_identity": 6, "oversample": 1.3}, "dataset": {"images_per_identity": 4}}
    )
    assert params.identities.variants_per_identity == 8


def test_stage_rejects_bad_params_with_status_2_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("preset: smoke\nidentities: {count: -5}\nfilter: {min_det_prob: 7}\n")
    out = tmp_path / "out.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "stages.filter", "--params", str(bad), "--candidates", str(tmp_path), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: filter.min_det_prob: must be <= 1.0, got 7",
        "error: identities.count: must be > 0, got -5",
    ]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def _leaves(model: type, prefix: str = "") -> set[str]:
    from pydantic import BaseModel

    keys = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= _leaves(ann, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_params_yaml_lists_every_knob() -> None:
    """`dvc exp run -S a.b=v` only sets keys already in params.yaml: every schema leaf must be there."""
    from pipeline.config import Params

    def flatten(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out |= flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
        return out

    listed = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    mappings = ("balance.targets", "variation.edits")  # knobs whose keys are the user's
    listed = {next((m for m in mappings if k.startswith(f"{m}.")), k) for k in listed}
    assert listed == _leaves(Params)


def test_null_means_inherit_from_preset(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "p.yaml").write_text(yaml.safe_dump({"identities": {"count": 40}, "dataset": {"identities": 4}}))
    params_file = tmp_path / "params.yaml"
    params_file.write_text("preset: p\nidentities: {count: null, shard_size: null}\n")
    params = load_params(params_file, configs)
    assert params.identities.count == 40 and params.identities.shard_size == 256


def test_none_switches_the_judge_off_and_passes_the_plugin_checks() -> None:
    """params.yaml's comment promises `judge.model: none` (a null would take the preset's judge)."""
    params = validate_params({"judge": {"model": "none"}})
    assert params.judge.model is None and check_plugins(params) is params
    assert validate_params({}).judge.model == "dlib_resnet"


def test_yaml_lists_become_tuples_and_numbers_coerce() -> None:
    params = validate_params(
        {"detect": {"thresholds": [0.5, 0.6, 0.7]}, "filter": {"brightness": [0.1, 0.8], "max_faces": 2.0}}
    )
    assert params.detect.thresholds == (0.5, 0.6, 0.7)
    assert params.filter.brightness == (0.1, 0.8) and params.filter.max_faces == 2


_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=3),
)


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _paths(v, (*prefix, k))
    return out


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_params_are_valid_or_name_their_key_path(data: st.DataObject) -> None:
    """Any mutation of a valid config (types, ranges, unknown keys, nested nonsense) is either accepted
    or rejected with ConfigError lines that each start with a key path; never another exception."""
    from pipeline.config import Params

    raw = Params().model_dump(mode="json")
    raw["dataset"] = {"identities": 10, "images_per_identity": 2}
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(raw)))
        target = raw
        for part in path[:-1]:
            target = target[part]
        if data.draw(st.booleans()):
            target[path[-1]] = data.draw(_JUNK)
        else:
            target[data.draw(st.text(min_size=1, max_size=8))] = data.draw(_JUNK)
    try:
        check_plugins(validate_params(raw))
    except ConfigError as err:
        assert err.problems
        plain = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*|\d+|'.*'|\".*\"")
        for line in err.problems:
            path, _, message = line.partition(": ")
            assert message, line
            parts = re.findall(r"'[^']*'|\"[^\"]*\"|[^.]+", path)
            assert path == "(top level)" or all(plain.fullmatch(p) for p in parts), line
            assert parts[0] in Params.model_fields or "unknown key" in message or path == "(top level)", line


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_passes_the_schema_and_the_plugin_checks(tmp_path: Path, preset: str) -> None:
    from pipeline.plugins import load_checked_params

    path = tmp_path / "params.yaml"
    path.write_text(f"preset: {preset}\n")
    params = load_checked_params(path)
    assert params.preset == preset and params.dataset.identities <= params.identities.count
