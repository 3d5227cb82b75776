"""The label audit finds planted label noise: two classes that are one person (rendered from one latent) and a
class that is two people, by embeddings and by the smoke renderer's true attributes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

import pipeline.report.audit as audit_module
from pipeline.curation.consistency import normalise
from pipeline.report.audit import LabelAudit, plot_rows

from .conftest import columns_of, make_device_pass, small_params

CPU = torch.device("cpu")


def table(classes: list[int], embeddings: np.ndarray, skin: list[str]) -> pa.Table:
    return pa.table({
        "class": pa.array(classes, pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.astype(np.float16).ravel()), 512),
        "attr_smoke_skin": pa.array(skin, pa.string()),
    })  # fmt: skip


def planted(seed: int = 0) -> tuple[list[pa.Table], int]:
    """20 classes x 6 samples around their own person (cosine ~0.9 to it); class 7 is class 3's person again,
    class 11 has 2 of its 6 samples from class 12's person (labelled with that person's skin tone)."""
    rng = np.random.default_rng(seed)
    people = normalise(rng.standard_normal((20, 512)))
    people[7] = people[3]
    skins = np.array(["light", "medium", "dark"])[rng.integers(0, 3, 20)]
    skins[12] = "dark" if skins[11] != "dark" else "light"
    tables = []
    for lo in range(0, 20, 5):  # tables of whole classes, as the export's spills are
        classes, emb, skin = [], [], []
        for c in range(lo, lo + 5):
            who = [c] * 6 if c != 11 else [11] * 4 + [12] * 2
            classes += [c] * 6
            emb += [normalise(people[p] + 0.45 * rng.standard_normal(512) / np.sqrt(512) * 1.0) for p in who]
            skin += [skins[p] for p in who]
        tables.append(table(classes, np.stack(emb), skin))
    return tables, 20


def run(tables: list[pa.Table]) -> dict:
    audit = LabelAudit(0.8, ["smoke_skin"])
    for t in tables:
        audit.add(t)
    return audit.finish(0.5, CPU)


def test_audit_finds_one_person_in_two_classes_and_two_people_in_one() -> None:
    tables, classes = planted()
    out = run(tables)
    one, two = out["one_person"], out["two_people"]
    assert one["sampled_classes"] == classes and one["examples"] == [[3, 7]]
    assert one["pairs_found"] == 1 and one["estimated_pairs"] == 1.0 and one["interval"] == [1.0, 1.0]
    assert two["classes_with_25pct_unlike"] == 1  # class 11 only: 2 of 6 samples are another person
    assert two["attributes"]["smoke_skin"] == {
        "samples_differing_from_class_majority": pytest.approx(2 / 120),
        "classes_with_a_differing_sample": 1,
    }
    rows = plot_rows(out)
    assert (
        len(rows) == 10 and sum(r["unlike"] for r in rows) == classes and sum(r["attr_smoke_skin"] for r in rows) == 20
    )


def test_a_sampled_audit_estimates_the_whole_dataset_with_an_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every class searched: 1 pair. 10 of 20 searched: the estimate scales by 20 / (2 x 10) and the interval
    holds the truth."""
    monkeypatch.setattr(audit_module, "AUDIT_SAMPLE", 10)
    one = run(planted()[0])["one_person"]
    assert one["sampled_classes"] == 10
    # each sampled end of the one true pair counts once, scaled by 20 / (2 x 10)
    assert one["estimated_pairs"] in (0.0, 1.0, 2.0) and one["pairs_found"] == min(1, int(one["estimated_pairs"]))
    low, high = one["interval"]
    assert low <= 1.0 <= high < 10


def test_classes_must_come_whole_and_in_order() -> None:
    from pipeline.errors import PipelineError

    tables, _ = planted()
    audit = LabelAudit(0.8, [])
    audit.add(tables[1])
    with pytest.raises(PipelineError, match="classes must come whole and in order"):
        audit.add(tables[0])


def test_audit_on_smoke_renders_finds_a_class_rendered_twice_and_a_mixed_class() -> None:
    """Real renders through the face stack, variants without style mixing: class 1 is identity 0's latent
    rendered again, class 3 mixes two identities of different true skin tone; the smoke preset's thresholds
    (its random embedder tells distinct smoke identities apart only below cosine ~0.9)."""
    device_pass = make_device_pass(small_params(variation={"mix": False}))
    ids = np.array([0] * 4 + [0] * 4 + [1] * 4 + [2] * 2 + [5] * 2)
    var = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 0, 1, 0, 1])
    cols = columns_of(device_pass, ids, var)
    skin = list(cols["attr_smoke_skin"])
    assert skin[12] != skin[14], "identities 2 and 5 differ in skin tone (the renderer's truth)"
    t = table([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4, np.stack(cols["embedding"]).astype(np.float32), skin)
    audit = LabelAudit(0.3, ["smoke_skin"])
    audit.add(t)
    out = audit.finish(0.985, CPU)
    assert out["one_person"]["examples"] == [[0, 1]]
    assert out["two_people"]["attributes"]["smoke_skin"]["classes_with_a_differing_sample"] == 1
