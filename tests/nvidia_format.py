"""Write network pickles the way NVIDIA's persistence module does, for tests (no NVIDIA code involved).

Every module becomes a record rebuilt through `torch_utils.persistence._reconstruct_persistent_obj`
with its class name, constructor arguments and state; `module_src` is a program that would leave
a marker file and raise if anyone ran it.
"""

from __future__ import annotations

import collections
import contextlib
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

NVIDIA_CLASS_NAMES = {"StyleGAN2Generator": "Generator", "StyleGAN3Generator": "Generator"}
DERIVED_ATTRIBUTES = (
    "size",
    "sampling_rate",
    "bandwidth",
    "in_size",
    "out_size",
    "padding",
    "up_factor",
    "down_factor",
)


def hostile_module_src(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('module_src ran')\nraise RuntimeError('module_src must never run')\n"


@contextlib.contextmanager
def fake_nvidia_modules() -> Iterator[types.SimpleNamespace]:
    """Importable stand-ins for torch_utils.persistence and dnnlib.util while pickling."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta: Any) -> Any:  # pragma: no cover - only its name is pickled
        raise RuntimeError("never called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    added = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": persistence,
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": util,
    }
    saved = {k: sys.modules.get(k) for k in added}
    sys.modules.update(added)
    try:
        yield types.SimpleNamespace(hook=_reconstruct_persistent_obj, EasyDict=EasyDict)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Persistent:
    def __init__(self, hook: Any, meta: dict[str, Any]):
        self.hook, self.meta = hook, meta

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.hook, (self.meta,)


def _record(module: nn.Module, ns: types.SimpleNamespace, src: str, init_kwargs: dict[str, Any] | None) -> _Persistent:
    state: dict[str, Any] = {
        "training": False,
        "_parameters": collections.OrderedDict(module._parameters),
        "_buffers": collections.OrderedDict(module._buffers),
        "_non_persistent_buffers_set": set(module._non_persistent_buffers_set),
        "_modules": collections.OrderedDict(
            (k, None if m is None else _record(m, ns, src, None)) for k, m in module._modules.items()
        ),
        "_init_args": (),
        "_init_kwargs": ns.EasyDict(init_kwargs or {}),
    }
    for attr in DERIVED_ATTRIBUTES:
        if attr in module.__dict__:
            value = module.__dict__[attr]
            state[attr] = np.float64(value) if isinstance(value, float) else value
    name = NVIDIA_CLASS_NAMES.get(type(module).__name__, type(module).__name__)
    return _Persistent(ns.hook, {"type": "class", "version": 6, "module_src": src, "class_name": name, "state": state})


def write_network_pickle(
    path: Path,
    generator: nn.Module,
    g_kwargs: dict[str, Any],
    discriminator: nn.Module | None = None,
    d_kwargs: dict[str, Any] | None = None,
    marker: Path | None = None,
) -> None:
    """A pickle shaped like NVIDIA's snapshots: {G, D, G_ema, augment_pipe, training_set_kwargs}."""
    src = hostile_module_src(marker or path.with_suffix(".pwned"))
    with fake_nvidia_modules() as ns:
        g = _record(generator, ns, src, g_kwargs)
        d = _record(discriminator, ns, src, d_kwargs) if discriminator is not None else None
        data = {"G": g, "D": d, "G_ema": g, "augment_pipe": None, "training_set_kwargs": ns.EasyDict(resolution=64)}
        path.write_bytes(pickle.dumps(data, protocol=4))
