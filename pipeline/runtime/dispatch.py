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


class OpCounter(TorchDispatchMode):
    """Counts every dispatched aten op (views included) and the ones that synchronise with the host."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops += 1
        self.syncs += func._schema.name in SYNC_OPS
        return func(*args, **(kwargs or {}))


class HostCopies(TorchFunctionMode):
    """Counts `.cpu()`, `.numpy()`, `.tolist()` and `.item()` calls on tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += getattr(func, "__name__", "") in HOST_METHODS
        return func(*args, **(kwargs or {}))


def count_dispatch(fn: Callable[[], Any]) -> tuple[int, int]:
    """(ops dispatched, host round trips) of one call of `fn`. An `.item()` counts once even though it both
    is a host method and dispatches `_local_scalar_dense`."""
    with HostCopies() as copies, OpCounter() as ops:
        fn()
    return ops.ops, ops.syncs + copies.count
