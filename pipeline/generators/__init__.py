"""Generators behind one registry: `load_generator(source, device)` and `load_discriminator` (DESIGN §5).

`source` is a registered name (`smoke`), a known weights name (`stylegan2-ffhq-256x256`, read from
the weights folder and checked against the sha256 lock), or a path to an NVIDIA `.pkl` or one of
our `.pt` checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.generators.base import Generator
from pipeline.registry import Registry, UnknownNameError

if TYPE_CHECKING:
    from pipeline.weights import WeightsStore

GENERATORS: Registry[Generator] = Registry("generator")
PICKLE_SUFFIXES = (".pkl", ".pt")


@GENERATORS.register("smoke")
def _smoke(resolution: int | None = None, plant: float = 0.0) -> Generator:
    from pipeline.generators.smoke import SmokeGenerator

    return SmokeGenerator(resolution or 128, plant)


def is_known_source(source: str) -> bool:
    """A name we can build or fetch, or a path that looks like a network file (existence checked on load)."""
    from pipeline.weights import WEIGHTS

    spec = WEIGHTS.get(source)
    return source in GENERATORS or (spec is not None and spec.kind == "generator") or source.endswith(PICKLE_SUFFIXES)


def known_sources() -> list[str]:
    from pipeline.weights import WEIGHTS

    return GENERATORS.names() + sorted(n for n, s in WEIGHTS.items() if s.kind == "generator")


def require_known_source(source: str) -> None:
    """UnknownNameError listing what `generator.model` may be, unless `source` is one of them."""
    if not is_known_source(source):
        raise UnknownNameError(
            f"unknown generator {source!r} (available: {', '.join(known_sources())}, or a .pkl/.pt path)"
        )


def _resolve_file(source: str, weights: WeightsStore | None) -> tuple[Path, str, str, str]:
    """(path, sha256, label, license) of a weights name or a file path, verified against the lock."""
    from pipeline.weights import NVIDIA_LICENSE, WEIGHTS, WeightsError, WeightsStore

    weights = weights or WeightsStore()
    spec = WEIGHTS.get(source)
    if spec is not None:
        path = weights.path(spec)
        if not path.is_file():
            raise WeightsError(
                f"generator.model: {path} not found; fetch it with `uv run dvc repro weights` (downloads {spec.url}), "
                "or run offline with `uv run dvc exp run -S preset=smoke`"
            )
        return path, weights.verify(path), f"{spec.name} (NVIDIA pretrained)", spec.license
    path = Path(source)
    if not path.is_file():
        raise WeightsError(f"generator.model: file {path} not found")
    return path, weights.verify(path), path.name, f"as distributed with {path.name} (NVIDIA pickles: {NVIDIA_LICENSE})"


def _load_networks(source: str, weights: WeightsStore | None) -> dict[str, nn.Module]:
    """Every network in the file `source` names (G_ema, D), read and sha256-verified once."""
    from pipeline.generators.checkpoint import load_networks

    require_known_source(source)
    path, digest, label, license_text = _resolve_file(source, weights)
    networks = load_networks(path)
    for module in networks.values():
        module.sha256, module.label, module.license = digest, label, license_text
    return networks


def _pick(networks: dict[str, nn.Module], key: str, source: str) -> nn.Module:
    if key not in networks:
        raise UnknownNameError(f"{source} holds no {key} network (it has {sorted(networks)})")
    return networks[key]


def load_models(
    source: str,
    device: str | torch.device = "cpu",
    resolution: int | None = None,
    weights: WeightsStore | None = None,
    plant: float = 0.0,
) -> tuple[Generator, nn.Module | None]:
    """The generator and, when its file carries one, the discriminator: the file is read once."""
    if source in GENERATORS:
        return load_generator(source, device, resolution, plant=plant), None
    networks = _load_networks(source, weights)
    generator = _pick(networks, "G_ema", source).eval().requires_grad_(False).to(device)
    disc = networks.get("D")
    return generator, None if disc is None else disc.to(device)


def load_generator(
    source: str,
    device: str | torch.device = "cpu",
    resolution: int | None = None,
    weights: WeightsStore | None = None,
    plant: float = 0.0,
) -> Generator:
    """Build the generator `source` names, in eval mode on `device`; `plant`: the share of smoke renders given an
    artifact (`artifacts.plant`)."""
    if source in GENERATORS:
        generator = GENERATORS.create(source, resolution=resolution, **({"plant": plant} if plant else {}))
    else:
        generator = _pick(_load_networks(source, weights), "G_ema", source)
    return generator.eval().requires_grad_(False).to(device)


def load_discriminator(
    source: str, device: str | torch.device = "cpu", weights: WeightsStore | None = None
) -> nn.Module:
    """The StyleGAN2 discriminator a network pickle carries: D(img, c) -> logits [N, 1]."""
    return _pick(_load_networks(source, weights), "D", source).to(device)


__all__ = ["GENERATORS", "Generator", "load_discriminator", "load_generator", "load_models"]
