"""Code structure the pipeline relies on: dvc.yaml deps cover what each stage runs, the code fingerprint
follows the import closure, and the package's import graph has no cycles."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import fingerprint
from pipeline.fingerprint import ROOT, code_fingerprint, direct_imports, import_closure

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
    assert not missing, f"dvc.yaml stage {name} lacks deps (add them or their folder): {missing}"


@pytest.mark.parametrize("name", sorted(DVC))
def test_dvc_code_deps_exist(name: str) -> None:
    code = [d for d in DVC[name]["deps"] if d.startswith(("pipeline", "stages"))]
    assert code and all((ROOT / d).exists() for d in code), [d for d in code if not (ROOT / d).exists()]


def test_config_is_pure_schema() -> None:
    """Everything imports config; config imports no registry, so it can never close an import circle."""
    names = {f.relative_to(ROOT).as_posix() for f in import_closure(ROOT / "pipeline" / "config.py")}
    assert names == {"pipeline/__init__.py", "pipeline/config.py", "pipeline/errors.py"}


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
    assert ROOT / "pipeline" / "generate.py" not in import_closure(ROOT / "pipeline" / "calibrate.py")


def test_static_closure_holds_every_module_a_generate_run_loads() -> None:
    """The fingerprint's closure is static; whatever a real run imports (lazily too) must be in it."""
    script = (
        "import sys, tempfile, pathlib\n"
        "from pipeline.config import validate_params\n"
        "from pipeline.generate import run_generate\n"
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
    closure = set(import_closure(ROOT / "pipeline" / "generate.py"))
    assert ROOT / "pipeline" / "faces" / "detect.py" in loaded
    assert loaded <= closure, sorted(p.relative_to(ROOT).as_posix() for p in loaded - closure)


def test_fingerprint_changes_with_an_imported_file_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for package in fingerprint.PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "ROOT", tmp_path)
    direct_imports.cache_clear()
    try:
        entry = tmp_path / "pipeline" / "generate.py"
        before = code_fingerprint(entry)
        with open(tmp_path / "pipeline" / "export.py", "a") as fh:  # not imported by generate
            fh.write("# unrelated\n")
        assert code_fingerprint(entry) == before
        with open(tmp_path / "pipeline" / "faces" / "detect.py", "a") as fh:  # imported, two levels down
            fh.write("# changed\n")
        assert code_fingerprint(entry) != before
    finally:
        direct_imports.cache_clear()
