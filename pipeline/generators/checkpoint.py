"""Load networks from NVIDIA pickles or from our own state-dict checkpoints (`.pt`), never running code."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.generators.network_pickle import (
    NetworkPickleError,
    PersistentObject,
    build_network,
    check_arguments,
    read_network_pickle,
)

CHECKPOINT_FORMAT = "synthfaces-network-v1"
HTML_MARKERS = (b"<!doctype html", b"<html", b"<?xml", b"<head")


def save_checkpoint(module: nn.Module, path: str | Path) -> None:
    """Our own format: family, constructor arguments and state dict (loads with weights_only=True)."""
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "family": module.family,
            "init_kwargs": module.init_kwargs,
            "state_dict": module.state_dict(),
        },
        path,
    )


def sniff(path: Path) -> str:
    """'pickle', 'zip' (torch.save) or raise with the reason the file cannot be weights."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        raise NetworkPickleError(f"{path} is empty (truncated download?): delete it and fetch again")
    if head.lstrip().lower().startswith(HTML_MARKERS):
        raise NetworkPickleError(
            f"{path} is an HTML/XML page, not weights (an error page saved by a download): delete it and fetch again"
        )
    if zipfile.is_zipfile(path):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    raise NetworkPickleError(f"{path} is neither a network pickle nor a torch checkpoint")


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """One of our `.pt` checkpoints (weights only, so nothing in it runs), its arguments checked first."""
    from pipeline.generators.stylegan2 import StyleGAN2Generator
    from pipeline.generators.stylegan2_discriminator import Discriminator
    from pipeline.generators.stylegan3 import StyleGAN3Generator

    classes = {
        "stylegan2": StyleGAN2Generator,
        "stylegan3": StyleGAN3Generator,
        "stylegan2-discriminator": Discriminator,
    }
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a zip that is not a checkpoint
        raise NetworkPickleError(f"{path}: not a readable torch checkpoint ({type(err).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise NetworkPickleError(f"{path}: not a synthfaces network checkpoint")
    family, kwargs, state = blob.get("family"), blob.get("init_kwargs"), blob.get("state_dict")
    if family not in classes or not isinstance(kwargs, dict) or not isinstance(state, dict):
        raise NetworkPickleError(f"{path}: unknown network family {family!r} (known: {', '.join(classes)})")
    check_arguments(kwargs, f"{path}")
    try:
        module = classes[family](**kwargs)
        module.load_state_dict(state, strict=True)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise NetworkPickleError(
            f"{path}: {family} checkpoint does not build ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    module.family, module.init_kwargs = family, kwargs
    key = "D" if family == "stylegan2-discriminator" else "G_ema"
    return {key: module.eval().requires_grad_(False)}


def load_networks(path: str | Path) -> dict[str, Any]:
    """{'G_ema': module, 'D': module (if present), ...} from a .pkl, or {'G_ema' or 'D': module} from our .pt."""
    path = Path(path)
    if sniff(path) == "zip":
        return _load_checkpoint(path)
    data = read_network_pickle(path)
    out: dict[str, Any] = {}
    for key in ("G_ema", "D"):
        if isinstance(data.get(key), PersistentObject):
            out[key] = build_network(data[key])
    if not out:
        raise NetworkPickleError(f"{path}: no G_ema or D network in the pickle (keys: {sorted(map(str, data))})")
    return out
