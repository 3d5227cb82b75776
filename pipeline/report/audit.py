"""The label audit of every build: how much label noise the exported classes still carry.

- **Classes that are one person** (leaks): a seeded sample of classes is searched exactly (curation/search.py)
  against every class, by the curation embedder's class centroids over the exported samples; the number of
  class pairs above `dedup.max_identity_similarity` in the whole dataset is estimated from it, with a 95%
  interval (exact when the sample is every class). Where the independent judge ran, the class pairs it calls
  the same person among its classes are scaled to the dataset likewise.
- **Classes that are two people**: per class, the share of samples below `dedup.min_sample_consistency` to the
  class's final centroid; and for identity-level attributes, the share of samples whose label differs from
  their class's majority.

Memory: one float16 centroid and a few counts per class; samples are seen one table at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from scipy.stats import chi2

from pipeline.curation.consistency import normalise
from pipeline.curation.search import kernel, query_pairs, wilson
from pipeline.errors import PipelineError
from pipeline.shards.candidates import embedding_matrix

#: Classes searched against every class for leaks (all of them below this).
AUDIT_SAMPLE = 5_000
#: A class with at least this share of samples unlike its centroid may be two people.
TWO_PEOPLE_SHARE = 0.25
#: Bin edges of the per-class shares in the audit's plot.
SHARE_EDGES = np.linspace(0.0, 1.0, 11)


@dataclass
class LabelAudit:
    """Per-class state gathered from the exported samples (tables holding whole classes)."""

    min_consistency: float
    attributes: list[str]  # identity-level attributes to check (attr_<name> columns)
    classes: list[np.ndarray] = field(default_factory=list)
    centroids: list[np.ndarray] = field(default_factory=list)
    samples: list[np.ndarray] = field(default_factory=list)
    unlike: list[np.ndarray] = field(default_factory=list)
    differing: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, table: pa.Table) -> None:
        """Samples of whole classes: columns `class`, `embedding` and attr_<attribute> for each attribute."""
        labels = table.column("class").to_numpy()
        uniq, inverse = np.unique(labels, return_inverse=True)
        if self.classes and len(uniq) and uniq[0] <= self.classes[-1][-1]:
            raise PipelineError("label audit: classes must come whole and in order (metadata.parquet order)")
        emb = normalise(embedding_matrix(table.column("embedding")))
        sums = np.zeros((len(uniq), emb.shape[1]), np.float64)
        np.add.at(sums, inverse, emb)
        centroids = normalise(sums)
        cosine = (emb * centroids[inverse]).sum(1)
        self.classes.append(uniq)
        self.centroids.append(centroids.astype(np.float16))
        self.samples.append(np.bincount(inverse, minlength=len(uniq)))
        self.unlike.append(np.bincount(inverse, weights=cosine < self.min_consistency, minlength=len(uniq)))
        for a in self.attributes:
            self.differing.setdefault(a, []).append(_differing(table.column(f"attr_{a}"), inverse, len(uniq)))

    def finish(self, threshold: float, device: torch.device, judge: dict[str, Any] | None = None) -> dict[str, Any]:
        classes = np.concatenate(self.classes) if self.classes else np.zeros(0, np.int64)
        samples = np.concatenate(self.samples) if self.samples else np.zeros(0)
        unlike = np.concatenate(self.unlike) if self.unlike else np.zeros(0)
        share = unlike / np.maximum(samples, 1)
        out: dict[str, Any] = {
            "classes": len(classes),
            "one_person": self._leaks(classes, threshold, device),
            "two_people": {
                "min_sample_consistency": self.min_consistency,
                "samples_unlike_their_class": float(unlike.sum() / max(samples.sum(), 1)),
                "classes_with_an_unlike_sample": int((unlike > 0).sum()),
                f"classes_with_{int(TWO_PEOPLE_SHARE * 100)}pct_unlike": int((share >= TWO_PEOPLE_SHARE).sum()),
                "attributes": {},
            },
            "histogram": {"share": [float(x) for x in SHARE_EDGES[:-1]], "unlike": _hist(share)},
        }
        for a, parts in self.differing.items():
            differing = np.concatenate(parts) if parts else np.zeros(0)
            out["two_people"]["attributes"][a] = {
                "samples_differing_from_class_majority": float(differing.sum() / max(samples.sum(), 1)),
                "classes_with_a_differing_sample": int((differing > 0).sum()),
            }
            out["histogram"][f"attr_{a}"] = _hist(differing / np.maximum(samples, 1))
        if judge and judge.get("class_pairs"):
            out["one_person"]["judge"] = _judge_leaks(judge, len(classes))
        return out

    def _leaks(self, classes: np.ndarray, threshold: float, device: torch.device) -> dict[str, Any]:
        """Look-alike class pairs: counted from a seeded sample of classes, scaled to every class."""
        n = len(classes)
        if n < 2:
            return {"threshold": threshold, "sampled_classes": n, "pairs_found": 0, "estimated_pairs": 0.0,
                    "interval": [0.0, 0.0], "examples": []}  # fmt: skip
        centroids = np.concatenate(self.centroids)
        rows = np.sort(np.random.default_rng(0).choice(n, size=min(n, AUDIT_SAMPLE), replace=False))
        q, k = query_pairs(centroids[rows], centroids, threshold, device, kernel(device)[0], 4_096)
        other = rows[q] != k
        a, b = rows[q][other], k[other]
        hits, scale = len(a), n / (2 * len(rows))
        if len(rows) == n:
            interval = (hits * scale, hits * scale)
        else:  # hits ~ Poisson: exact 95% interval of its mean
            low = chi2.ppf(0.025, 2 * hits) / 2 if hits else 0.0
            interval = (low * scale, chi2.ppf(0.975, 2 * hits + 2) / 2 * scale)
        pairs = sorted({(int(min(x, y)), int(max(x, y))) for x, y in zip(classes[a], classes[b], strict=True)})
        return {
            "threshold": threshold,
            "sampled_classes": len(rows),
            "pairs_found": len(pairs),
            "estimated_pairs": hits * scale,
            "interval": [float(interval[0]), float(interval[1])],
            "examples": [list(p) for p in pairs[:10]],
        }


def _differing(column: pa.ChunkedArray, inverse: np.ndarray, classes: int) -> np.ndarray:
    """Per class: samples labelled otherwise than the class's most common label (unlabelled ones count as
    agreeing; ties: the label first in sort order)."""
    labels = pd.Series(column.to_numpy(zero_copy_only=False)).astype(str).to_numpy()
    frame = pd.DataFrame({"c": inverse, "label": labels})
    labelled = frame[frame["label"] != ""]
    counts = labelled.groupby(["c", "label"]).size().reset_index(name="n")
    majority = counts.sort_values(["c", "n", "label"], ascending=[True, False, True]).drop_duplicates("c")
    agree = np.zeros(classes)
    agree[majority["c"].to_numpy()] = majority["n"].to_numpy()
    return np.bincount(labelled["c"].to_numpy(), minlength=classes) - agree


def _hist(shares: np.ndarray) -> list[int]:
    return [int(x) for x in np.histogram(np.clip(shares, 0.0, 1.0), SHARE_EDGES)[0]]


def _judge_leaks(judge: dict[str, Any], classes: int) -> dict[str, Any]:
    """The judge's same-person class pairs among its classes, scaled to every class pair of the dataset."""
    k, total = int(judge["same_person_class_pairs"]), int(judge["class_pairs"])
    everyone = classes * (classes - 1) / 2
    low, high = wilson(k, total)
    return {
        "model": judge["model"],
        "classes": judge["classes"],
        "same_person_class_pairs": k,
        "class_pairs": total,
        "estimated_pairs": k / total * everyone,
        "interval": [low * everyone, high * everyone],
        "rate": k / total,
        "rate_interval": [low, high],
    }


def plot_rows(audit: dict[str, Any]) -> list[dict[str, Any]]:
    """reports/plots/label_audit.csv rows: classes per bin of the share of their samples unlike them."""
    hist = audit.get("histogram", {})
    shares = hist.get("share", [])
    return [{"share": s, **{k: v[i] for k, v in hist.items() if k != "share"}} for i, s in enumerate(shares)]


def sentence_pairs(estimate: float, interval: list[float]) -> str:
    return f"{estimate:,.0f} (95% interval {math.floor(interval[0]):,}-{math.ceil(interval[1]):,})"
