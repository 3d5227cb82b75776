"""Worker processes that die with the process that started them, so a killed run leaves nothing behind."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

#: prctl option: the signal the kernel sends this process when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux; elsewhere nothing happens); exit at
    once if the parent `parent` is already gone (it died before the request was made)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
