"""Which library files a module runs (its static import closure) and a sha256 of their source: what cached
outputs are invalidated by when the code changes, and what dvc.yaml must list as a stage's deps."""

from __future__ import annotations

import ast
import hashlib
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


def source_fingerprint(files: Iterable[Path]) -> str:
    """sha256 over the given files' paths (relative to the repository) and bytes, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(Path(f).resolve() for f in files):
        digest.update(file.relative_to(ROOT).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def code_fingerprint(module_file: str | Path) -> str:
    """sha256 of the source of everything `module_file` imports: changes exactly when its behaviour can."""
    return source_fingerprint(import_closure(Path(module_file)))
