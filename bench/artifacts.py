"""Artifact scorers against planted truth: ROC AUC per scorer (planted renders of its kinds vs. clean renders,
look-alike accessories included), the share of clean renders and of real photographs its documented
threshold flags, and the face stack's ops and CPU time with the scorers on vs. off, in one run.

    uv run python bench/artifacts.py                 # 960 smoke renders at 256 px (about 3 minutes on 2 cores)
    uv run python bench/artifacts.py --n 192 --rounds 2   # a smaller run
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, not bench/, first on the path: bench/pipeline.py would shadow the `pipeline` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import time

import numpy as np
import torch
from PIL import Image
from skimage import data

from pipeline.config import validate_params
from pipeline.faces.analyze import FaceAnalyzer
from pipeline.faces.columns import ARTIFACT_COLUMNS
from pipeline.faces.columns import SUGGESTED_THRESHOLDS as SUGGESTED
from pipeline.generators import load_generator
from pipeline.generators.synthesis import to_uint8
from pipeline.runtime.dispatch import count_dispatch

#: The planted kinds each scorer is meant to catch (attr_smoke_artifact values).
CATCHES = {
    "catchlights": ["catchlights"],
    "droplets": ["droplets"],
    "background": ["background"],
    "accessories": ["earring", "glasses"],
}
SCORERS = list(ARTIFACT_COLUMNS)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney probability that a positive outscores a negative (ties count half)."""
    both = np.concatenate([positive, negative])
    order = both.argsort(kind="stable")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    for value in np.unique(both):  # average ranks of ties
        tied = both == value
        ranks[tied] = ranks[tied].mean()
    return float(
        (ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative))
    )


def analyzer(resolution: int, scorers: list[str]) -> FaceAnalyzer:
    p = validate_params({"embed": {"allow_random": True, "serfiq_passes": 0}})
    return FaceAnalyzer(p.detect, p.align, p.embed, torch.device("cpu"), resolution, scorers=scorers)


def smoke_scores(n: int, resolution: int, batch: int) -> dict[str, np.ndarray]:
    g = load_generator("smoke", resolution=resolution, plant=0.5)
    stack = analyzer(resolution, SCORERS)
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((n, g.z_dim)).astype(np.float32))
    out: dict[str, list] = {}
    for lo in range(0, n, batch):
        ws = g.mapping(z[lo : lo + batch])
        pixels = to_uint8(g.synthesis(ws)).permute(0, 2, 3, 1).contiguous()
        result = stack(pixels)
        cols = {c: result.columns[c] for c in ARTIFACT_COLUMNS.values()} | {"found": result.found}
        for k, v in (cols | g.true_attributes(ws)).items():
            out.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in out.items()}


def photographs() -> dict[str, np.ndarray]:
    """Real photographs at hand: scikit-image's astronaut and cameraman, and the face tests' composites."""
    astro = data.astronaut()
    pil = Image.fromarray(astro)
    return {
        "astronaut": astro,
        "astronaut rot+15": np.asarray(pil.rotate(15, center=(225, 115), resample=Image.BILINEAR)),
        "astronaut rot-25": np.asarray(pil.rotate(-25, center=(225, 115), resample=Image.BILINEAR)),
        "astronaut 256 px": np.asarray(pil.resize((256, 256), Image.LANCZOS)),
        "cameraman": np.repeat(data.camera()[:, :, None], 3, 2),
    }


def photo_scores() -> dict[str, dict[str, float]]:
    found = {}
    for name, image in photographs().items():
        stack = analyzer(image.shape[0], SCORERS)
        result = stack(torch.from_numpy(np.array(image[None])))
        if result.found[0]:
            found[name] = {c: float(result.columns[c][0]) for c in ARTIFACT_COLUMNS.values()}
    return found


def cost(resolution: int, batch: int, rounds: int) -> dict[str, float]:
    """Ops per image and CPU seconds per batch of the face stack, scorers off and on, interleaved."""
    g = load_generator("smoke", resolution=resolution)
    z = torch.from_numpy(np.random.default_rng(1).standard_normal((batch, g.z_dim)).astype(np.float32))
    pixels = to_uint8(g.synthesis(g.mapping(z))).permute(0, 2, 3, 1).contiguous()
    stacks = {"off": analyzer(resolution, []), "on": analyzer(resolution, SCORERS)}
    out: dict[str, float] = {}
    for name, stack in stacks.items():
        stack(pixels)
        ops, trips = count_dispatch(lambda s=stack: s(pixels))
        out[f"ops_{name}"], out[f"trips_{name}"] = ops / batch, trips
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for name, stack in stacks.items():
            start = time.process_time()
            stack(pixels)
            times[name].append(time.process_time() - start)
    out["cpu_off"], out["cpu_on"] = (float(np.median(times[k])) for k in ("off", "on"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=960, help="smoke renders (half of them planted)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="timed face-stack batches per setting")
    args = parser.parse_args()
    torch.manual_seed(0)
    s = smoke_scores(args.n, args.resolution, args.batch)
    found = s["found"]
    clean = found & (s["attr_smoke_artifact"] == "none")
    photos = photo_scores()
    print(f"{args.n} smoke renders at {args.resolution} px, {int(found.sum())} faces found, {int(clean.sum())} clean "
          f"({int((clean & (s['attr_smoke_accessory'] != 'none')).sum())} with a look-alike accessory); "
          f"real photographs with a face found: {', '.join(photos)}")  # fmt: skip
    print("\n| scorer | column | planted | ROC AUC | threshold | clean flagged | planted flagged | photos flagged "
          "| max photo |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    lowest_note: list[str] = []
    for scorer, column in ARTIFACT_COLUMNS.items():
        planted = found & np.isin(s["attr_smoke_artifact"], CATCHES[scorer])
        t = SUGGESTED[column]
        photo = [v[column] for v in photos.values()]
        lowest = max(float(np.quantile(s[column][clean], 0.98)), max(photo))  # <= 2% clean, no photo above it
        lowest_note.append(f"{column} {lowest:.3f} (flags {np.mean(s[column][planted] > lowest):.1%} of planted)")
        print(f"| {scorer} | {column} | {int(planted.sum())} | {auc(s[column][planted], s[column][clean]):.3f} | {t} "
              f"| {np.mean(s[column][clean] > t):.1%} | {np.mean(s[column][planted] > t):.1%} "
              f"| {sum(v > t for v in photo)} of {len(photo)} | {max(photo):.3f} |")  # fmt: skip
    for scorer, kinds in CATCHES.items():  # a scorer of several kinds: each kind on its own
        column = ARTIFACT_COLUMNS[scorer]
        for kind in kinds if len(kinds) > 1 else ():
            planted = found & (s["attr_smoke_artifact"] == kind)
            flagged = np.mean(s[column][planted] > SUGGESTED[column])
            print(f"{scorer}, {kind} only: {int(planted.sum())} planted, ROC AUC "
                  f"{auc(s[column][planted], s[column][clean]):.3f}, flagged {flagged:.1%}")  # fmt: skip
    print("lowest threshold flagging <= 2% of clean renders and no photograph: " + "; ".join(lowest_note))
    for name, values in photos.items():
        print(f"photo {name}: " + ", ".join(f"{c} {v:.3f}" for c, v in values.items()))
    c = cost(args.resolution, args.batch, args.rounds)
    print(f"\nface stack at {args.resolution} px, batch {args.batch}: {c['ops_off']:.1f} -> {c['ops_on']:.1f} ops per "
          f"image, {c['trips_off']:.0f} -> {c['trips_on']:.0f} host round trips per batch; CPU time "
          f"{c['cpu_off']:.2f} -> {c['cpu_on']:.2f} s per batch ({c['cpu_on'] / c['cpu_off']:.3f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
