"""Which of our files a module runs (its static import closure): what dvc.yaml must list as a stage's deps,
and the import graph the structure tests check. `uv run python -m tests.imports` rewrites dvc.yaml's code deps
from the closures."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Top-level packages of this repository whose imports are followed.
PACKAGES = ("pipeline", "stages")


def _module_file(name: str) -> Path | None:
    """The file that defines module `name` (a package's __init__.py), if it is ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(file: Path) -> str:
    parts = file.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (annotations only, never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


@cache
def direct_imports(file: Path) -> frozenset[Path]:
    """Our modules `file` imports anywhere in its body (function-level imports too), by the names it writes."""
    tree = ast.parse(file.read_text(), str(file))
    package = _module_name(file) if file.name == "__init__.py" else _module_name(file).rpartition(".")[0]
    found: set[Path] = set()
    for node in _runtime_nodes(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if _module_file(f"{base}.{alias.name}") else base for alias in node.names]
        for name in names:
            target = _module_file(name)
            if target is not None and target != file:
                found.add(target)
    return frozenset(found)


def _with_packages(file: Path) -> set[Path]:
    """`file` and the __init__.py of every package above it (Python runs those first)."""
    out = {file}
    for parent in file.relative_to(ROOT).parents:
        init = ROOT / parent / "__init__.py"
        if parent != Path(".") and init.is_file():
            out.add(init)
    return out


def import_closure(*entries: Path) -> list[Path]:
    """Every file of ours that importing (and running) `entries` can execute, sorted."""
    seen: set[Path] = set()
    todo = [f for e in entries for f in _with_packages(Path(e).resolve())]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for target in direct_imports(file):
            todo.extend(_with_packages(target) - seen)
    return sorted(seen)


def _python_files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def code_deps(entry: Path) -> list[str]:
    """dvc.yaml deps for a stage whose entry point is `entry`: its closure, a folder where all of it is used."""
    files = set(import_closure(entry))
    roots = {ROOT / "pipeline", ROOT / "stages", ROOT}
    out = set()
    for file in files:
        top = file.parent
        if top in roots or not _python_files(top) <= files:
            out.add(file.relative_to(ROOT).as_posix())
            continue
        while top.parent not in roots and _python_files(top.parent) <= files:
            top = top.parent
        out.add(top.relative_to(ROOT).as_posix())
    return sorted(out)


def rewrite_dvc_deps(path: Path = ROOT / "dvc.yaml") -> None:
    """Replace each stage's code deps in dvc.yaml by `code_deps` of its entry point (data and configs kept)."""
    import re

    import yaml

    text = path.read_text()
    for name, stage in yaml.safe_load(text)["stages"].items():
        module = re.search(r"python -m stages\.(\w+)", stage["cmd"]).group(1)
        other = [d for d in stage["deps"] if not d.startswith(("pipeline", "stages"))]
        deps = [d for d in other if not d.startswith("configs")]
        deps += code_deps(ROOT / "stages" / f"{module}.py") + [d for d in other if d.startswith("configs")]
        block = re.compile(r"(\n  " + re.escape(name) + r":\n(?:.*\n)*?    deps:\n)((?:      - .*\n)+)")
        found = block.search(text)
        text = text[: found.start(2)] + "".join(f"      - {d}\n" for d in deps) + text[found.end(2) :]
    path.write_text(text)


if __name__ == "__main__":
    rewrite_dvc_deps()
