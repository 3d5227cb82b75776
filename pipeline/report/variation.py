"""What varies inside the classes and what must not: per edited axis, the pooled within-identity spread against a
uniform spread over its range; per identity-level attribute, the share of variants labelled otherwise than
their identity's canonical image (variant 0). The report stage writes both into metrics.json (`variation`);
bench/identities.py compares configurations with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import Params
from pipeline.faces.attributes import attribute_catalog
from pipeline.shards.candidates import iter_candidates


def pooled_sd(values: pd.Series, groups: pd.Series) -> float:
    """Pooled within-group standard deviation (NaN values skipped)."""
    frame = pd.DataFrame({"v": values.to_numpy(np.float64), "g": groups.to_numpy()}).dropna()
    if frame.empty:
        return float("nan")
    deviation = frame["v"] - frame.groupby("g")["v"].transform("mean")
    return float(np.sqrt((deviation**2).sum() / max(len(frame) - frame["g"].nunique(), 1)))


def variation_report(
    samples: pd.DataFrame,
    canonical: pd.DataFrame,
    edits: dict[str, tuple[float, float]],
    identity_attributes: list[str],
    axes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`samples`: identity, variant and attr_* columns of the samples to judge (the exported ones); `canonical`:
    identity and the identity attributes' attr_* columns of each identity's variant 0. `axes` maps an edited
    attribute to the column whose spread measures it (default attr_<attribute>; the smoke renderer's truth)."""
    axes = axes or {}
    out: dict[str, Any] = {"axes": {}, "identity_attributes": {}}
    for name, (low, high) in sorted(edits.items()):
        column = axes.get(name, f"attr_{name}")
        if column not in samples:
            continue
        uniform = (high - low) / np.sqrt(12)
        sd = pooled_sd(samples[column], samples["identity"])
        out["axes"][name] = {"column": column, "pooled_sd": sd, "uniform_sd": uniform, "ratio": sd / uniform}
    variants = samples[samples["variant"] > 0]
    for name in identity_attributes:
        column = f"attr_{name}"
        if column not in samples or column not in canonical:
            continue
        own = variants["identity"].map(canonical.set_index("identity")[column])
        labelled = (variants[column] != "") & own.notna() & (own != "")
        differ = labelled & (variants[column] != own)
        out["identity_attributes"][name] = {
            "variants": int(labelled.sum()),
            "differ_from_canonical": float(differ.sum() / max(labelled.sum(), 1)),
        }
    return out


def dataset_variation(params: Params, candidates: Path, metadata: Path) -> dict[str, Any]:
    """`variation_report` of an exported dataset (metadata.parquet) against its identities' canonical
    candidates; an axis is measured by the smoke renderer's truth (`attr_smoke_<axis>`) where it exists."""
    catalog = attribute_catalog(params.attributes)
    identity_attrs = [a for a, info in catalog.items() if info.level == "identity"]
    names = pq.read_schema(metadata).names
    axes = {a: f"attr_smoke_{a}" if f"attr_smoke_{a}" in names else f"attr_{a}" for a in params.variation.edits}
    columns = [c for c in {*axes.values(), *(f"attr_{a}" for a in identity_attrs)} if c in names]
    samples = pq.read_table(metadata, columns=["identity", "variant", *columns]).to_pandas()
    wanted = ["identity", "variant", *(f"attr_{a}" for a in identity_attrs if f"attr_{a}" in names)]
    canonical = pd.concat(
        [t.filter(pc.equal(t.column("variant"), 0)).to_pandas() for t in iter_candidates(candidates, wanted)]
    )
    return variation_report(samples, canonical, dict(params.variation.edits), identity_attrs, axes)
