"""Identity capacity: how many new people each block of generated identities adds.

A StyleGAN generator has a finite identity capacity: the more identities drawn, the more often a new
one looks like one drawn before. Per block of identity ids (generation order), `novel` is the share
of the block's identities (those reaching dedup) with no look-alike among lower ids, `kept` the share
dedup keeps. When `novel` falls toward zero, generating more stops paying.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Blocks in the curve: enough to see a trend, few enough to read.
BLOCKS = 50


def block_size(count: int, shard_size: int) -> int:
    """Whole shards per block, at most BLOCKS blocks."""
    shards = -(-count // shard_size)
    return shard_size * max(1, -(-shards // BLOCKS))


def capacity_curve(
    ids: np.ndarray, pairs: np.ndarray, kept: np.ndarray, block: int, generated: int | None = None
) -> pd.DataFrame:
    """One row per block: identities generated so far (at most `generated`), and the block's novel and kept
    shares.

    `pairs` are positions into `ids` (look-alike pairs); an identity is novel when none of its
    look-alikes has a lower id."""
    earlier = np.zeros(len(ids), bool)
    if len(pairs):
        a, b = pairs[:, 0], pairs[:, 1]
        later = np.where(ids[a] > ids[b], a, b)
        earlier[later] = True
    blocks = ids // block
    frame = pd.DataFrame({"block": blocks, "novel": ~earlier, "kept": kept})
    per = frame.groupby("block").agg(entered=("novel", "size"), novel=("novel", "mean"), kept=("kept", "mean"))
    return pd.DataFrame({
        "identities": np.minimum((per.index.to_numpy() + 1) * block, generated or np.iinfo(np.int64).max),
        "entered_dedup": per["entered"].to_numpy(),
        "novel": per["novel"].round(4).to_numpy(),
        "kept": per["kept"].round(4).to_numpy(),
    })  # fmt: skip


def capacity_metrics(curve: pd.DataFrame) -> dict[str, float | int]:
    """The first and last block's novel share: their gap is what the last block's generation still bought."""
    if curve.empty:
        return {}
    return {
        "blocks": len(curve),
        "block_identities": int(curve["identities"].iloc[0]),
        "novel_first_block": float(curve["novel"].iloc[0]),
        "novel_last_block": float(curve["novel"].iloc[-1]),
        "kept_overall": float(np.average(curve["kept"], weights=curve["entered_dedup"])),
    }
