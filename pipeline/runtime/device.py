"""Resolve `runtime.devices`, `runtime.precision` and `runtime.batch_size` for the machine at hand."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch

from pipeline.config import RuntimeParams
from pipeline.errors import PipelineError

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
    """bf16/fp16: torch autocast; fp32: IEEE fp32, also on CUDA, where cuDNN convolutions default to TF32."""
    if precision != "fp32":
        return torch.autocast(device.type, dtype=DTYPES[precision])
    return ieee_fp32() if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """cuDNN convolutions in IEEE fp32 while inside: with TF32 (its default, a 10-bit mantissa) StyleGAN2's
    pixels on an H200 were 2.3e-3 off the CPU's, beyond the 2e-3 the CUDA-vs-CPU test allows."""
    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = before


#: `batch_size: auto` on a CPU, and the CUDA starting point before the probe.
CPU_BATCH, CUDA_START_BATCH = 32, 64


def batch_size(runtime: RuntimeParams, device: torch.device) -> int:
    """`runtime.batch_size`; for auto, the starting point (CUDA refines it with `probe_batch_size`)."""
    if runtime.batch_size != "auto":
        return runtime.batch_size
    return CUDA_START_BATCH if device.type == "cuda" else CPU_BATCH


#: Largest batch `auto` picks, and the share of free device memory it may plan to use.
MAX_AUTO_BATCH, MEMORY_HEADROOM = 512, 0.8


def fit_batch(fixed_bytes: float, per_sample_bytes: float, free_bytes: float, cap: int = MAX_AUTO_BATCH) -> int:
    """The largest batch, a power of two up to `cap`, whose planned memory fits the headroom of free memory."""
    budget = MEMORY_HEADROOM * free_bytes - max(fixed_bytes, 0.0)
    fits = int(budget // max(per_sample_bytes, 1.0))
    if fits < 1:
        return 1
    return min(cap, 1 << (fits.bit_length() - 1))


def probe_batch_size(run: Callable[[int], object], device: torch.device, sizes: tuple[int, int] = (2, 4)) -> int:
    """CUDA: run two small batches, fit peak memory = fixed + n x per-sample, and take the largest batch
    that fits (out-of-memory later still halves it). Elsewhere: the CPU default."""
    if device.type != "cuda":
        return CPU_BATCH
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    peaks = []
    for n in sizes:
        torch.cuda.reset_peak_memory_stats(device)
        run(n)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_sample = (peaks[1] - peaks[0]) / (sizes[1] - sizes[0])
    fixed = peaks[0] - sizes[0] * per_sample
    free, _ = torch.cuda.mem_get_info(device)
    reserved_idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    chosen = fit_batch(fixed, per_sample, free + reserved_idle)
    log.info("batch_size auto: %d (%.1f MiB per image, %.0f MiB free)", chosen, per_sample / 2**20, free / 2**20)
    return chosen


def synthesis_batch(runtime: RuntimeParams, device: torch.device, generator: torch.nn.Module, batch: int) -> int:
    """Images per generator call: `runtime.synthesis_batch`, else the whole batch on CUDA and the
    generator's `cpu_batch` on a CPU."""
    if runtime.synthesis_batch != "auto":
        return min(runtime.synthesis_batch, batch)
    if device.type == "cuda":
        return batch
    return min(getattr(generator, "cpu_batch", None) or batch, batch)


def apply_threads(runtime: RuntimeParams) -> None:
    """`runtime.threads` torch CPU threads (CPU float results depend on the count: pin it for identical bytes)."""
    if runtime.threads and torch.get_num_threads() != runtime.threads:
        torch.set_num_threads(runtime.threads)
