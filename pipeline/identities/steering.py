"""Latent steering: move each new identity's w toward the attribute bin its shard lacks most.

For every identity-level target, the bin with the largest deficit (target share x identities so
far - identities already in it) is chosen; the identity's w is moved along that bin's calibrated
direction until it sits `margin` past the boundary (no move when it already does). The
estimators' labels of the generated faces, not the intent, update the counts, so a direction
that misses is corrected by the next choices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.faces.attributes import Direction


class ShardSteerer:
    """Counts and choices for one shard (state never crosses shards: any shard can run anywhere)."""

    def __init__(self, plan: dict[str, Any], directions: list[Direction]):
        self.targets: dict[str, dict[str, float]] = plan["targets"]
        self.margin = float(plan["margin"])
        self.chunk = int(plan["chunk"])
        self.directions = {(d.attribute, d.cls): d for d in directions}
        self.counts = {a: dict.fromkeys(t, 0) for a, t in self.targets.items()}

    def _choose(self, attribute: str, pending: dict[str, int]) -> str:
        shares = self.targets[attribute]
        total = sum(self.counts[attribute].values()) + sum(pending.values()) + 1
        deficit = {c: p * total - self.counts[attribute][c] - pending[c] for c, p in shares.items()}
        return max(shares, key=lambda c: (deficit[c], shares[c]))

    def assign(self, w: np.ndarray) -> tuple[np.ndarray, dict[str, list[str]]]:
        """W offsets [N, w_dim] for N new identities (canonical w rows) and the bin each was sent to."""
        offsets = np.zeros_like(w, dtype=np.float64)
        chosen: dict[str, list[str]] = {a: [] for a in self.targets}
        pending = {a: dict.fromkeys(t, 0) for a, t in self.targets.items()}
        for k in range(len(w)):
            for attribute in self.targets:
                cls = self._choose(attribute, pending[attribute])
                pending[attribute][cls] += 1
                chosen[attribute].append(cls)
                direction = self.directions.get((attribute, cls))
                if direction is None:
                    continue
                score = float(direction.score(w[k] + offsets[k]))
                if score < self.margin:
                    offsets[k] += (self.margin - score) * direction.normal
        return offsets.astype(np.float32), chosen

    def verify(self, labels: dict[str, np.ndarray]) -> None:
        """Count what the estimators saw (unlabelled faces count nowhere)."""
        for attribute, values in labels.items():
            for value in values:
                if value in self.counts[attribute]:
                    self.counts[attribute][value] += 1
