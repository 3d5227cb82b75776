"""What a piece of device code costs in the units that decide GPU speed, counted on any device: torch ops
dispatched (about one kernel launch each, 5-20 us of launch and Python dispatch on a GPU) and host round trips
(each stalls the host until the device catches up)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

#: Dispatched ops that make the host wait for the device (`.item()`, bool / int casts dispatch the first).
SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select"})
#: Tensor methods that copy to the host (on a CPU tensor they dispatch no op of their own).
HOST_METHODS = frozenset({"cpu", "numpy", "tolist", "item"})


#: Ops that bring host data into a tensor (`torch.tensor(...)`): mid-pass on a GPU, a copy from pageable host
#: memory waits for the device first.
HOST_DATA_OPS = frozenset({"aten::lift_fresh", "aten::lift_fresh_copy"})


class OpCounter(TorchDispatchMode):
    """Counts every dispatched aten op (views included), the ones that synchronise with the host, and the ones
    that bring host data in."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.host_data = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops += 1
        self.syncs += func._schema.name in SYNC_OPS
        self.host_data += func._schema.name in HOST_DATA_OPS
        return func(*args, **(kwargs or {}))


class HostCopies(TorchFunctionMode):
    """Counts `.cpu()`, `.numpy()`, `.tolist()` and `.item()` calls on tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += getattr(func, "__name__", "") in HOST_METHODS
        return func(*args, **(kwargs or {}))


def count_dispatch(fn: Callable[[], Any], host_data: bool = False) -> tuple[int, ...]:
    """(ops dispatched, host round trips) of one call of `fn`, and with `host_data` the tensors it made from
    host values."""
    with HostCopies() as copies, OpCounter() as ops:
        fn()
    counts = (ops.ops, ops.syncs + copies.count)
    return (*counts, ops.host_data) if host_data else counts
