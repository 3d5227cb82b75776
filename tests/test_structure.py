"""Code structure the pipeline relies on: dvc.yaml deps cover what each stage runs, the package's import graph
has no cycles, generate's closure stays clear of calibrate, and modules and functions stay small enough to
read."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .imports import ROOT, direct_imports, import_closure
from .params_walk import entries, generate_walk

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> Path:
    name = re.search(r"python -m stages\.(\w+)", stage["cmd"]).group(1)
    return ROOT / "stages" / f"{name}.py"


@pytest.mark.parametrize("name", sorted(DVC))
def test_dvc_deps_cover_every_file_the_stage_imports(name: str) -> None:
    deps = [ROOT / d for d in DVC[name]["deps"]]
    missing = [
        f.relative_to(ROOT).as_posix()
        for f in import_closure(stage_module(DVC[name]))
        if not any(f == d or d in f.parents for d in deps)
    ]
    assert not missing, f"dvc.yaml stage {name} lacks deps {missing}: run `uv run python -m tests.imports`"


@pytest.mark.parametrize("name", sorted(DVC))
def test_dvc_code_deps_exist(name: str) -> None:
    code = [d for d in DVC[name]["deps"] if d.startswith(("pipeline", "stages"))]
    assert code and all((ROOT / d).exists() for d in code), [d for d in code if not (ROOT / d).exists()]


def test_config_is_pure_schema() -> None:
    """Everything imports config; config imports no registry, so it can never close an import circle."""
    names = {f.relative_to(ROOT).as_posix() for f in import_closure(ROOT / "pipeline" / "config" / "__init__.py")}
    config = {"pipeline/config/__init__.py", "pipeline/config/load.py", "pipeline/config/schema.py"}
    assert names == {"pipeline/__init__.py", "pipeline/errors.py", *config}


def test_package_import_graph_has_no_cycles() -> None:
    graph = {f: direct_imports(f) for f in sorted((ROOT / "pipeline").rglob("*.py"))}
    state: dict[Path, int] = {}
    cycles: list[list[str]] = []

    def visit(node: Path, path: list[Path]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([p.relative_to(ROOT).as_posix() for p in path[path.index(nxt) :]])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_generate_runs_no_calibrate_code() -> None:
    """The directions' file format lives in identities/calibration.py, so the fitting code is not in generate's
    closure (and the old source-text fingerprint is gone from the library)."""
    closure = {f.relative_to(ROOT).as_posix() for f in import_closure(ROOT / "stages" / "generate.py")}
    assert "pipeline/calibrate.py" not in closure and "pipeline/identities/calibration.py" in closure
    assert not (ROOT / "pipeline" / "fingerprint.py").exists()


#: Longest module (lines) and function (lines, decorators and docstring included) under pipeline/.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def test_no_module_or_function_is_too_long_to_read() -> None:
    long_modules, long_functions = [], []
    for file in sorted((ROOT / "pipeline").rglob("*.py")):
        text = file.read_text()
        name = file.relative_to(ROOT).as_posix()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - min([node.lineno, *(d.lineno for d in node.decorator_list)]) + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}:{node.lineno} {node.name}: {lines} lines")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_params_reach_generate_s_parts_as_sections() -> None:
    """The whole Params object enters each module of a generate run at most three times (tests/params_walk.py;
    before the generate package it entered generate.py seven times), and never the face stack, the estimators
    or the latents, which take their sections."""
    walk = generate_walk()
    assert max(entries(walk).values()) <= 3, entries(walk)
    assert not {m for m in walk if m.startswith(("pipeline/faces/", "pipeline/identities/"))}, walk


def test_static_closure_holds_every_module_a_generate_run_loads() -> None:
    """dvc.yaml deps come from the static closure; whatever a real run imports (lazily too) must be in it."""
    script = (
        "import sys, tempfile, pathlib\n"
        "from pipeline.config import validate_params\n"
        "from pipeline.generate.driver import run_generate\n"
        "p = validate_params({'generator': {'resolution': 64}, 'identities': {'count': 2, 'images_per_identity': 2,"
        " 'oversample': 1.0, 'shard_size': 2}, 'detect': {'min_face_size': 20}, 'embed': {'allow_random': True,"
        " 'serfiq_passes': 2}, 'attributes': {'estimators': ['pose', 'smoke']},"
        " 'variation': {'mix_start': 1}, 'dataset': {'identities': 1, 'images_per_identity': 1},"
        " 'runtime': {'precision': 'fp32'}})\n"
        "run_generate(p, pathlib.Path(tempfile.mkdtemp()))\n"
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'pipeline'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={"SYNTHFACES_NO_PROGRESS": "1", "PATH": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = {Path(line).resolve() for line in proc.stdout.split()}
    closure = set(import_closure(ROOT / "pipeline" / "generate" / "driver.py"))
    assert ROOT / "pipeline" / "faces" / "detect.py" in loaded
    assert loaded <= closure, sorted(p.relative_to(ROOT).as_posix() for p in loaded - closure)
