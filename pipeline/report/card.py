"""The dataset card (`data/dataset/README.md`) in Hugging Face's format: YAML front matter + prose."""

from __future__ import annotations

from typing import Any

import yaml

SMOKE_NOTICE = (
    "> **Smoke-test dataset.** These faces come from synthfaces' parametric smoke-test renderer, not from a "
    "face model. It exists to test the pipeline offline; do not train a recognition model on it."
)


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


#: Above this equal-error rate the judge cannot tell the dataset's identities apart (0.5 = chance).
JUDGE_CANNOT_TELL = 0.25


def judge_section(j: dict[str, Any], smoke: bool) -> str:
    """The independent judge's verdict: a second recognition model, never used for curation."""
    head = (
        f"## Independent judge\n{j['label']} (`{j['model']}`), never used for curation, on {j['samples']} "
        f"samples of {j['classes']} classes: {j['genuine_pairs']} genuine and {j['impostor_pairs']} impostor pairs."
    )
    if "eer" not in j:
        return head + " Too few pairs to score."
    rows = [
        ("cosine, genuine / impostor mean", f"{j['genuine_cosine_mean']:.3f} / {j['impostor_cosine_mean']:.3f}"),
        ("distance, genuine / impostor mean", f"{j['genuine_distance_mean']:.3f} / {j['impostor_distance_mean']:.3f}"),
        ("equal-error rate", f"{j['eer']:.3f}"),
        ("true-accept rate at false-accept 1e-3", f"{j['tar_at_far_1e-3']:.3f}"),
    ]
    text = head + "\n\n" + _table(rows, ("measure", "value"))
    if smoke:
        text += (
            "\n\n> A real face-recognition model cannot tell these smoke-test identities apart: the renderer's "
            "people are not distinct faces to it, whatever the pipeline's own (random-weight) embedder decided."
        )
    elif j["eer"] > JUDGE_CANNOT_TELL:
        text += f"\n\n> The judge barely tells these identities apart (equal-error rate {j['eer']:.2f}; 0.5 is chance)."
    return text


def _contents(info: dict[str, Any]) -> str:
    counts = info["counts"]
    rows = [
        ("identities (classes)", counts["identities"]),
        ("images per identity", counts["images_per_identity"]),
        ("samples", counts["samples"]),
        ("candidates generated", counts["candidates"]),
        ("output shards", info["shards"]),
        ("formats", ", ".join(info["formats"])),
    ]
    files = [(f"`{f['folder']}/`", f["files"], f["reader"]) for f in info["format_notes"]]
    files += [
        ("`metadata.parquet`", "every sample, no pixels, with embeddings", "pyarrow, pandas"),
        ("`manifest.json`", "counts, params, sha256 of every file", "`synthfaces verify`"),
    ]
    return (
        "## Contents\n"
        + _table(rows, ("what", "count"))
        + "\n\n## Files\n"
        + _table(files, ("path", "what", "read with"))
    )


def _training(info: dict[str, Any]) -> str:
    """Each trainer's route for the formats exported, with this dataset's name and counts filled in (each was
    run with the trainer's own code: docs/formats.md)."""
    name, counts, formats = info["name"], info["counts"], set(info["formats"])
    n, c = counts["samples"], counts["identities"]
    routes = {
        "recordio": [
            ("insightface arcface_torch", f'`config.rec = "<this folder>/recordio"`, `config.num_classes = {c}`, '
             f"`config.num_image = {n}`"),
            ("AdaFace", f'`ln -s "$PWD/recordio" /data/{name}`, then `python main.py --use_mxrecord --data_root /data '
             f"--train_data_path {name}`"),
            ("CVLFace", f'`ln -s "$PWD/recordio" "$DATA_ROOT/{name}"` (the name is `rec` in `recordio/cvlface.yaml`), '
             f"`cp recordio/cvlface.yaml <run_v1>/dataset/configs/{name}.yaml`"),
        ],
        "imagefolder": [
            ("torchvision / arcface_torch", '`ImageFolder("<this folder>/imagefolder")`'),
            ("AdaFace", f'`mkdir -p /data/{name} && ln -s "$PWD/imagefolder" /data/{name}/imgs`, then `python main.py '
             f"--data_root /data --train_data_path {name}`"),
        ],
        "lmdb": [("SOTA-Face-Recognition-Train-and-Test", f'`config.train_source = "<this folder>/lmdb/train.lmdb"`, '
                  f"`config.num_ims = {n}`")],
        "webdataset": [("webdataset / wids", '`wids.ShardListDataset("<this folder>/webdataset/train.wids.json")`')],
        "parquet": [
            ("Hugging Face datasets", '`load_dataset("parquet", data_files="<this folder>/parquet/*.parquet")`')
        ],
    }  # fmt: skip
    rows = [(trainer, fmt, how) for fmt, entries in routes.items() if fmt in formats for trainer, how in entries]
    return "## Train on it\nRun the commands in this folder.\n\n" + _table(rows, ("trainer", "format", "how"))


def _audit(audit: dict[str, Any] | None) -> str:
    """The label audit in plain words: classes that may be one person, classes that may be two."""
    if not audit or not audit["classes"]:
        return ""
    one, two = audit["one_person"], audit["two_people"]
    searched = (
        f"all {audit['classes']:,} classes" if one["sampled_classes"] == audit["classes"]
        else f"{one['sampled_classes']:,} seeded classes against all {audit['classes']:,}"
    )  # fmt: skip
    low, high = one["interval"]
    lines = [
        f"- **Classes that are one person:** by the curation embedder, {one['pairs_found']:,} pairs of classes "
        f"whose centroids have cosine above {one['threshold']} ({searched}): about {one['estimated_pairs']:,.1f} "
        f"such pairs in the dataset (95% interval {low:,.1f}-{high:,.1f})."
    ]
    if judge := one.get("judge"):
        jl, jh = judge["interval"]
        lines.append(
            f"- By the independent judge (`{judge['model']}`): {judge['same_person_class_pairs']:,} of the "
            f"{judge['class_pairs']:,} pairs of its {judge['classes']} classes are the same person to it: about "
            f"{judge['estimated_pairs']:,.0f} pairs in the dataset (95% interval {jl:,.0f}-{jh:,.0f})."
        )
    share = two["samples_unlike_their_class"]
    many = next(v for k, v in two.items() if k.startswith("classes_with_") and k.endswith("pct_unlike"))
    lines.append(
        f"- **Classes that are two people:** {share:.1%} of the samples are below `dedup.min_sample_consistency` "
        f"({two['min_sample_consistency']}) to their class's centroid; {many:,} classes have a quarter or more such "
        "samples."
    )
    for a, d in two["attributes"].items():
        lines.append(
            f"- `{a}` (a person's attribute): {d['samples_differing_from_class_majority']:.1%} of the samples are "
            f"labelled otherwise than their class's majority, in {d['classes_with_a_differing_sample']:,} classes."
        )
    return "## Label audit\nLabel noise a recognition model would learn from, measured on this export.\n\n" + "\n".join(
        lines
    )


def _how_built(info: dict[str, Any]) -> str:
    gen = info["generator"]
    rows = [
        ("generator", f"`{gen['model']}` (sha256 `{gen['sha256'][:16]}…`)"),
        ("generator license", gen["license"]),
        ("identity embedder", f"InceptionResnetV1, weights `{info['embedder_weights']}`"),
        ("truncation psi", info["params"]["generator"]["truncation_psi"]),
        ("seed", info["params"]["seed"]),
        ("code", info["code_version"]),
    ]
    text = (
        "## How it was built\n"
        + _table(rows, ("what", "value"))
        + "\n\nPipeline: generate → filter (detector and quality rules) → dedup (within-identity "
        "consistency, cross-identity FAISS dedup) → balance → export. Full params are in `manifest.json`."
    )
    if info["embedder_weights"] == "none":
        text += (
            "\n\n> **Warning:** the identity embedder ran with random weights (no checkpoint was present), so "
            "consistency and dedup decisions are not meaningful."
        )
    return text


#: Why a quality score may be missing, per column (shown instead of NaN percentiles).
NOT_SCORED = {"q_disc": "not scored (`generator.disc_score: false`; the discriminator costs as much as generation)"}


def _quality(info: dict[str, Any]) -> str:
    """Percentiles of each score over the kept samples; a score nobody computed says so, and one whose printed
    percentiles are all the same is named, with the reason where it is known."""
    rows, constant = [], []
    for k, pcts in sorted(info["quality"].items()):
        if all(v != v for v in pcts):  # NaN: never computed
            rows.append((k, NOT_SCORED.get(k, "not scored"), "", ""))
            continue
        shown = [f"{v:.3g}" for v in pcts]
        rows.append((k, *shown))
        if len(set(shown)) == 1:
            constant.append(f"`{k}`")
    text = "## Quality of the kept samples\n" + _table(rows, ("score", "p5", "median", "p95"))
    if constant:
        text += f"\n\n> {', '.join(constant)}: about the same value for every kept sample"
        if "`q_serfiq`" in constant and info["embedder_weights"] == "none":
            text += (
                " (`q_serfiq`: SER-FIQ with the random-weight embedder, whose dropout passes barely differ, so it "
                "says nothing about a face here; it needs the real embedder weights)"
            )
        text += "."
    return text


def search_sentence(search: dict[str, Any] | None, dedup: dict[str, Any]) -> str:
    """How completely dedup found the look-alike identities (curation/search.py's report)."""
    if not search:
        return ""
    threshold, target = dedup["max_identity_similarity"], dedup["min_recall"]
    head = f"Look-alike identities (centroid cosine above {threshold}): {search['pairs']:,} pairs among "
    head += f"{search['identities']:,} identities, found by "
    if search["method"] == "exact":
        tried = "; IVF did not reach the recall target first" if search.get("rounds") else ""
        return head + (
            f"exact search on `{search['device']}` ({search['kernel']} products, every pair near the threshold "
            f"re-checked in float64): recall 1 by construction{tried}."
        )
    low, high = search["recall_interval"]
    probes = search["rounds"][-1]["nprobe"]
    return head + (
        f"an IVF index (nprobe {probes}): measured recall **{search['recall']:.4f}** (95% interval {low:.4f}-"
        f"{high:.4f}) of the {search['sample_true_pairs']:,} look-alike pairs touching {search['sample_queries']:,} "
        f"sampled identities, against the target `dedup.min_recall` {target}."
    )


def _curation(info: dict[str, Any]) -> list[str]:
    reasons = sorted(info["reasons"].items(), key=lambda kv: -kv[1])
    text = "## Curation\nCandidates rejected, by first reason:\n\n" + _table(
        reasons or [("(none)", 0)], ("reason", "count")
    )
    if sentence := search_sentence(info.get("search"), info["params"]["dedup"]):
        text += "\n\n" + sentence
    parts = [text]
    if info["quality"]:
        parts.append(_quality(info))
    if info["similarity"]:
        s = info["similarity"]
        rows = [
            ("genuine (same identity)", f"{s['genuine_mean']:.3f}"),
            ("impostor (different identities)", f"{s['impostor_mean']:.3f}"),
        ]
        parts.append("## Identity similarity (cosine of embeddings)\n" + _table(rows, ("pairs", "mean")))
    return parts


def _use_and_license(gen: dict[str, Any]) -> str:
    return (
        "## Intended use\nTraining and evaluating face-recognition models without photographs of real people. "
        "\n\n## Out-of-scope and misuse\nDo not present these images as real people, use them to deceive, or "
        "use them to impersonate anyone. Do not remove the embedded synthetic-media notice."
        "\n\n## Limitations\nGenerator biases carry over: attribute distributions reflect the generator's "
        "training data and the balance targets, not any population. Identity separation is only as good as "
        "the embedder used for dedup. A generator may reproduce faces close to real people from its training "
        "set; check against a reference set of real identities before release."
        f"\n\n## License\nImages are derived from `{gen['model']}`, whose weights are under: {gen['license']}. "
        "That license governs the use of this dataset."
    )


def render_card(info: dict[str, Any]) -> str:
    """`info`: name, generator (model, label, license, license_id, sha256), embedder_weights, counts,
    reasons, attributes {column: {value: count}}, quality {column: (p5, p50, p95)}, similarity,
    formats, format_notes [{folder, files, reader}], shards, params, code_version, smoke, judge (or None)."""
    gen = info["generator"]
    front = {
        "license": gen.get("license_id", "other"),
        "pretty_name": info["name"],
        "task_categories": ["image-classification"],
        "tags": ["synthetic", "face-recognition", "synthfaces"],
        "size_categories": [size_category(info["counts"]["samples"])],
    }
    if front["license"] == "other":
        front["license_name"] = gen["license"]
    parts = [f"---\n{yaml.safe_dump(front, sort_keys=False)}---", f"# {info['name']}"]
    if info.get("smoke"):
        parts.append(SMOKE_NOTICE)
    parts.append(
        "A synthetic face-recognition training set: every class is a person who does not exist, "
        f"generated by **{gen['label'] or gen['model']}** and curated by the synthfaces pipeline. "
        "Every image carries an embedded "
        "synthetic-media notice (IPTC DigitalSourceType `trainedAlgorithmicMedia` in XMP, and an "
        "EXIF ImageDescription)."
    )
    parts += [_contents(info)]
    if audit := _audit(info.get("audit")):
        parts.append(audit)
    parts += [_training(info), _how_built(info), *_curation(info)]
    if info.get("judge"):
        parts.append(judge_section(info["judge"], bool(info.get("smoke"))))
    for column, dist in sorted(info["attributes"].items()):
        total = sum(dist.values()) or 1
        rows = [(value, n, f"{100 * n / total:.1f}%") for value, n in sorted(dist.items())]
        parts.append(f"## Attribute `{column}`\n" + _table(rows, ("value", "samples", "share")))
    parts.append(_use_and_license(gen))
    return "\n\n".join(parts) + "\n"
