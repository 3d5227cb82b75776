"""The walk of the whole `Params` object through our code during a generate run: every call of one of our
functions that receives it, as an argument or as an argument's `params` attribute (a method of an object
that holds it), in call order, by module.

`stops` is that sequence with consecutive calls in one module collapsed; a module's entries are how often it
appears there. A module entered many times is one the params keep climbing back into (a sign that pieces of
config are fetched from the whole object deep down instead of being passed as sections).

    uv run python -m tests.params_walk      # prints the walk of a tiny smoke run
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from .imports import ROOT


def _ours(filename: str) -> str | None:
    path = Path(filename)
    if not path.is_absolute():
        return None
    try:
        rel = path.resolve().relative_to(ROOT)
    except ValueError:
        return None
    return rel.as_posix() if rel.parts[0] in ("pipeline", "stages") else None


def params_walk(run: Any, params: Any) -> list[str]:
    """Modules of our calls that receive `params`, in call order, consecutive repeats collapsed."""
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = _ours(frame.f_code.co_filename)
        if module is None:
            return
        code = frame.f_code
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        values = [frame.f_locals.get(n) for n in names]
        if any(v is params or getattr(v, "params", None) is params for v in values):
            calls.append(module)

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return [m for k, m in enumerate(calls) if k == 0 or calls[k - 1] != m]


def entries(stops: list[str]) -> Counter[str]:
    return Counter(stops)


def generate_walk() -> list[str]:
    """The walk of a tiny smoke generate run (2 identities x 2 variants, 64 px, CPU)."""
    from pipeline.generate.driver import run_generate

    from .conftest import small_params

    params = small_params(
        generator={"resolution": 64}, identities={"count": 2, "images_per_identity": 2, "shard_size": 2}
    )
    with tempfile.TemporaryDirectory() as tmp:
        return params_walk(lambda: run_generate(params, Path(tmp)), params)


if __name__ == "__main__":
    walk = generate_walk()
    print(f"{len(walk)} stops in {len(set(walk))} modules")
    for module, n in entries(walk).most_common():
        print(f"{n:3d}  {module}")
    print(" -> ".join(walk))
