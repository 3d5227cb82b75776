"""sha256 of library source files: what cached stage outputs are invalidated by when the code changes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def source_fingerprint(paths: Iterable[str]) -> str:
    """Hash of every .py file under the given paths (relative to pipeline/), names included, in sorted order."""
    digest = hashlib.sha256()
    for rel in paths:
        path = PACKAGE / rel
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(PACKAGE).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()
