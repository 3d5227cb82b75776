"""Read NVIDIA's StyleGAN network pickles without executing any code from them.

A restricted unpickler allows only what a genuine network pickle needs: plain containers,
tensor/storage rebuilding (storages read with `torch.load(weights_only=True)`), numpy arrays
and scalars, `dnnlib.util.EasyDict`, and the persistence hook
`torch_utils.persistence._reconstruct_persistent_obj`, which here returns an inert
`PersistentObject` (class name, constructor arguments, state); its embedded `module_src` is
kept as a string and never run. Anything else raises `UnsafePickleError` naming the global.
Our own modules are then built from the constructor arguments and loaded with the state.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from pipeline.errors import InputError

PERSISTENCE_HOOK = ("torch_utils.persistence", "_reconstruct_persistent_obj")
SUPPORTED_PERSISTENCE_VERSIONS = {1, 2, 3, 4, 5, 6}


class UnsafePickleError(InputError, pickle.UnpicklingError):
    """The pickle asks for a global that a network pickle never needs (it could run code)."""


class NetworkPickleError(InputError, ValueError):
    """The file is not a network pickle we can read (malformed, truncated, or an unknown network)."""


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a dict with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class PersistentObject:
    """What NVIDIA's persistence hook would have rebuilt, as inert data."""

    class_name: str
    version: int
    module_src: str = field(repr=False)
    state: dict[str, Any] = field(repr=False)

    @property
    def init_kwargs(self) -> dict[str, Any]:
        return _plain(self.state.get("_init_kwargs") or {})

    @property
    def init_args(self) -> tuple[Any, ...]:
        return tuple(self.state.get("_init_args") or ())

    @property
    def modules(self) -> dict[str, PersistentObject | None]:
        return dict(self.state.get("_modules") or {})


def _reconstruct(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise NetworkPickleError(f"persistence record of an unsupported kind: {type(meta).__name__}")
    version = meta.get("version")
    if version not in SUPPORTED_PERSISTENCE_VERSIONS:
        raise NetworkPickleError(f"persistence version {version!r} is not supported")
    state = meta.get("state")
    if not isinstance(state, dict) or not isinstance(meta.get("class_name"), str):
        raise NetworkPickleError("persistence record without a class name or state")
    return PersistentObject(meta["class_name"], version, str(meta.get("module_src", "")), state)


def _load_storage(data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray):
        raise NetworkPickleError("tensor storage is not a byte string")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged stream
        raise NetworkPickleError(f"unreadable tensor storage: {err}") from None
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise NetworkPickleError(f"tensor storage decoded to {type(storage).__name__}")
    return storage


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise NetworkPickleError("tensor rebuilt from something that is not a storage")
    if not all(isinstance(v, int) for v in (offset, *size, *stride)):
        raise NetworkPickleError("tensor with a non-integer size, stride or offset")
    return torch._utils._rebuild_tensor_v2(
        storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict()
    )


def _rebuild_parameter(data: Any, *_: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise NetworkPickleError("parameter rebuilt from something that is not a tensor")
    return data


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickleError("_codecs.encode is only allowed for latin1 byte strings")
    return codecs.encode(text, "latin1")


def _numpy(name: str) -> Any:
    import numpy._core.multiarray as multiarray

    return getattr(multiarray, name)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    PERSISTENCE_HOOK: _reconstruct,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch", "Size"): torch.Size,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy("_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): _numpy("_reconstruct"),
    ("numpy.core.multiarray", "scalar"): _numpy("scalar"),
    ("numpy._core.multiarray", "scalar"): _numpy("scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing global '{module}.{name}': a network pickle never needs it and it could run code"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a persistent id: network pickles do not use them")


def read_network_pickle(source: str | Path | BinaryIO) -> dict[str, Any]:
    """The pickled dict (G, D, G_ema, ...) with networks as PersistentObjects; nothing is executed."""
    fh = open(source, "rb") if isinstance(source, str | Path) else source  # noqa: SIM115
    try:
        data = _RestrictedUnpickler(fh).load()
    except (UnsafePickleError, NetworkPickleError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise NetworkPickleError(f"not a readable network pickle ({type(err).__name__}: {err})") from None
    finally:
        if fh is not source:
            fh.close()
    if not isinstance(data, dict):
        raise NetworkPickleError(f"a network pickle holds a dict of networks, this one holds {type(data).__name__}")
    return data


#: Plain values a network's constructor arguments hold at most (they are a few dozen numbers and names).
MAX_ARGUMENT_VALUES, MAX_NESTING = 10_000, 16
#: Upper bounds of the constructor arguments that size the network, at any nesting level: far above every
#: released network (512-d latents, 512 channels, 1024 px), far below what would exhaust memory.
ARGUMENT_LIMITS = {
    "z_dim": 4096, "w_dim": 4096, "c_dim": 1 << 16, "img_resolution": 4096, "img_channels": 4,
    "channel_base": 1 << 20, "channel_max": 4096, "num_layers": 64, "num_fp16_res": 16, "layer_features": 4096,
    "cmap_dim": 4096, "embed_features": 4096, "mapping_layers": 64, "num_critical": 16, "mbstd_group_size": 256,
    "mbstd_num_channels": 64, "conv_kernel": 15, "filter_size": 64, "margin_size": 1024,
}  # fmt: skip


def _plain(value: Any, budget: list[int] | None = None, depth: int = 0) -> Any:
    """EasyDicts and OrderedDicts to plain dicts, numpy scalars to Python numbers (constructor arguments);
    NetworkPickleError for anything larger or deeper than constructor arguments are (a pickle can make a
    structure refer to itself, or share one list a million times)."""
    budget = [MAX_ARGUMENT_VALUES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_NESTING:
        raise NetworkPickleError("constructor arguments are not plain data (nested or shared beyond any network's)")
    if isinstance(value, dict):
        return {k: _plain(v, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v, budget, depth + 1) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_arguments(kwargs: Any, where: str) -> None:
    """NetworkPickleError unless every value is plain data and no size argument exceeds its limit (checked
    before a network is built, so a hostile file cannot ask for terabytes)."""
    if isinstance(kwargs, dict):
        for key, value in kwargs.items():
            if not isinstance(key, str):
                raise NetworkPickleError(f"{where}: constructor argument names must be strings, got {key!r}")
            limit = ARGUMENT_LIMITS.get(key)
            sized = limit is not None and value is not None
            if sized and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit):
                raise NetworkPickleError(f"{where}: constructor argument {key}={value!r} is out of range 0..{limit}")
            check_arguments(value, where)
    elif isinstance(kwargs, list | tuple):
        for value in kwargs:
            check_arguments(value, where)
    elif not (kwargs is None or isinstance(kwargs, bool | int | float | str)):
        raise NetworkPickleError(f"{where}: constructor arguments hold a {type(kwargs).__name__}, not plain data")


#: Submodule nesting of the deepest network (a layer inside a block inside the synthesis network).
MAX_MODULE_DEPTH = 16


def state_dict_of(obj: PersistentObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """Own parameters, then persistent buffers, then submodules, names joined by dots (nn.Module order)."""
    if prefix.count(".") > MAX_MODULE_DEPTH:
        raise NetworkPickleError(f"modules nested deeper than {MAX_MODULE_DEPTH} levels at {prefix} (or in a cycle)")
    out: dict[str, torch.Tensor] = {}
    state = obj.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, tensor in (state.get("_parameters") or {}).items():
        if tensor is not None:
            out[prefix + name] = tensor
    for name, tensor in (state.get("_buffers") or {}).items():
        if tensor is not None and name not in skip:
            out[prefix + name] = tensor
    for name, child in obj.modules.items():
        if child is not None:
            if not isinstance(child, PersistentObject):
                raise NetworkPickleError(f"submodule {prefix}{name} is not a persistent network object")
            out |= state_dict_of(child, f"{prefix}{name}.")
    return out


def network_family(obj: PersistentObject) -> str:
    """'stylegan2', 'stylegan3' or 'stylegan2-discriminator', decided by structure, not by source."""
    if obj.class_name == "Discriminator":
        return "stylegan2-discriminator"
    if obj.class_name != "Generator":
        raise NetworkPickleError(f"unsupported network class {obj.class_name!r} (expected Generator or Discriminator)")
    synthesis = obj.modules.get("synthesis")
    if not isinstance(synthesis, PersistentObject) or synthesis.class_name != "SynthesisNetwork":
        raise NetworkPickleError("generator without a SynthesisNetwork")
    return "stylegan3" if "input" in synthesis.modules else "stylegan2"


def build_network(obj: PersistentObject) -> nn.Module:
    """Our module for a pickled network: constructed from its arguments, loaded with its state (strict)."""
    from pipeline.generators.stylegan2 import StyleGAN2Generator
    from pipeline.generators.stylegan2_discriminator import Discriminator
    from pipeline.generators.stylegan3 import StyleGAN3Generator

    family = network_family(obj)
    if obj.init_args:
        raise NetworkPickleError(f"{obj.class_name} pickled with positional constructor arguments")
    kwargs = obj.init_kwargs
    check_arguments(kwargs, family)
    cls = {"stylegan2": StyleGAN2Generator, "stylegan3": StyleGAN3Generator, "stylegan2-discriminator": Discriminator}[
        family
    ]
    try:
        module = cls(**kwargs)
    except (TypeError, ValueError, KeyError, AssertionError, ZeroDivisionError) as err:
        raise NetworkPickleError(f"{family}: unsupported constructor arguments ({type(err).__name__}: {err})") from None
    state = state_dict_of(obj)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise NetworkPickleError(f"{family}: pickled tensors do not fit the network: {str(err)[:300]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise NetworkPickleError(
            f"{family}: the pickled state does not fit the network built from its arguments "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    module.family = family
    module.init_kwargs = kwargs
    return module.eval().requires_grad_(False)
