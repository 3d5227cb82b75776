"""Generators behind one registry: `load_generator(source, device)` (DESIGN §5)."""

from __future__ import annotations

import torch

from pipeline.generators.base import Generator
from pipeline.registry import Registry

GENERATORS: Registry[Generator] = Registry("generator")


@GENERATORS.register("smoke")
def _smoke(resolution: int | None = None) -> Generator:
    from pipeline.generators.smoke import SmokeGenerator

    return SmokeGenerator(resolution or 128)


def load_generator(source: str, device: str | torch.device = "cpu", resolution: int | None = None) -> Generator:
    """Build the generator `source` names, in eval mode on `device`."""
    generator = GENERATORS.create(source, resolution=resolution)
    return generator.eval().requires_grad_(False).to(device)


__all__ = ["GENERATORS", "Generator", "load_generator"]
