"""Resolve `runtime.devices`, `runtime.precision` and `runtime.batch_size` for the machine at hand."""

from __future__ import annotations

import contextlib
import logging

import torch

from pipeline.config import PipelineError, RuntimeParams

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_devices(runtime: RuntimeParams) -> list[torch.device]:
    """'auto' = every visible GPU, else the CPU."""
    if runtime.devices == ["auto"]:
        if torch.cuda.is_available():
            return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        return [torch.device("cpu")]
    devices = [torch.device(d) for d in runtime.devices]
    for d in devices:
        if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
            raise PipelineError(f"runtime.devices: {d} is not available on this machine (set runtime.devices: [auto])")
    return devices


def effective_precision(runtime: RuntimeParams, device: torch.device) -> str:
    """Reduced precision runs on CUDA only; on the CPU it would be slower and change the numbers."""
    return runtime.precision if device.type == "cuda" else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def batch_size(runtime: RuntimeParams, device: torch.device) -> int:
    if runtime.batch_size != "auto":
        return runtime.batch_size
    return 64 if device.type == "cuda" else 32


def apply_threads(runtime: RuntimeParams) -> None:
    """`runtime.threads` torch CPU threads (CPU float results depend on the count: pin it for identical bytes)."""
    if runtime.threads and torch.get_num_threads() != runtime.threads:
        torch.set_num_threads(runtime.threads)
