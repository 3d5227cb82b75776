"""The one thing that talks on the terminal during a run: a tqdm bar on stderr."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

#: One log line format for stage processes and the device processes they spawn.
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def progress(total: int, desc: str, unit: str = "img") -> tqdm:
    """A bar that refreshes at most twice a second; off when SYNTHFACES_NO_PROGRESS is set."""
    disable = bool(os.environ.get("SYNTHFACES_NO_PROGRESS"))
    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5, dynamic_ncols=True, disable=disable
    )
