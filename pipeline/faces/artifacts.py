"""Artifact scorers: the tell-tale signs of a generated face, one `q_*` column each (faces/columns.py), queued on
the device in the face pass from the full-resolution frame and the five landmarks, copied with the rest.

Every scorer reads luminance views resampled once per batch in the frame of the eyes: origin at their midpoint,
x along the eye line, unit the eye distance d. So a score depends neither on resolution nor on the face's size
or roll.

- catchlights (after Hu, Li & Lyu 2021, "Exposing GAN-generated faces using inconsistent corneal specular
  highlights"): a light source leaves the same highlight in both eyes. Per eye: the iris, the strongest compact
  highlight within it and its offset from the iris' centre; compared between the eyes (offsets, not the paper's
  IoU of pixel masks, which landmark error of 0.1 eye distances defeats).
- droplets (StyleGAN's "water droplet" blobs): the white top-hat of the head view, the smaller of a horizontal
  and a vertical opening, so only blobs compact in both directions answer (a lit strand of hair does not);
  the eyes' and mouth's areas are left out.
- background: the largest luminance standard deviation among cells of the frame that lie away from the head
  (outside an ellipse about the face box, and not below it), where a melted shape or a second face shows.
- accessories: left against right, in colour views of the two halves mirrored about the face's axis. A thin-line
  map (3 x 3 top-hats in any colour channel: a step edge gives none) feeds two measures: the
  dark-line energy of the glasses' lower rim (an annulus below the eye), and the strongest ring at earring scale
  (a zero-mean ring template, as in circular template matching) in the zone where an earring hangs at any yaw.
  Each measure's sides give |L - R| / (L + R + floor); the score is the larger of the two.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch
import torch.nn.functional as F

from pipeline.faces.columns import ARTIFACT_COLUMNS
from pipeline.registry import Registry

_LUMA = torch.tensor([0.299, 0.587, 0.114])
#: Head view: samples per side and its extent in eye distances (x: across, y: down from the eye line).
HEAD, HEAD_X, HEAD_Y = 64, (-1.6, 1.6), (-1.4, 1.8)
#: Eye patches: samples per side, half-width in eye distances (wide enough to find the pupil near the landmark).
EYE, EYE_HALF = 32, 0.4
#: Frame view for the background: samples per side, cell size (8 x 8 cells).
FRAME, CELL = 64, 8
#: An eye has a highlight when its strongest compact bright spot stands this much above its surround (top-hat,
#: 0-255), fully at + RAMP; the spot's place is the soft maximum (softness in 0-255 units).
HIGHLIGHT, HIGHLIGHT_RAMP, HIGHLIGHT_SOFTNESS = 10.0, 10.0, 4.0
#: Highlights are looked for within this radius of the iris' centre (an iris is ~0.1 eye distances across the
#: radius), found as the soft maximum (softness in 0-255 units) of the compact dark top-hat with a window of PUPIL
#: samples: the iris is a dark disc within the bright sclera; a brow or a lash line is long, so it does not answer.
IRIS, PUPIL, PUPIL_SOFTNESS = 0.09, 9, 8.0
#: Highlights whose offsets from their iris' centres differ by TOLERANCE (eye distances: landmark and iris-finding
#: error) count as alike, by TOLERANCE + OFFSET as a full mismatch.
CATCHLIGHT_TOLERANCE, CATCHLIGHT_OFFSET = 0.03, 0.05
#: Below this eye distance (pixels) a catchlight (~1/25 of it) is a pixel or less: the eyes are not judged.
MIN_EYE_DISTANCE = 28.0
#: Top-hat window in head-view samples (0.25 eye distances).
TOPHAT = 5
#: Side views (accessories): x outward from the eye midpoint, y down from the eye line, sampled every SIDE_STEP
#: (eye distances); their thin-line top-hats use 3 x 3 samples (wider than a frame's line, narrower than a face).
SIDE_X, SIDE_Y, SIDE_STEP = (0.0, 2.4), (-0.05, 2.2), 0.025
#: Glasses: the lower rim's annulus about the eye at (0.5, 0): radii, and only below this y.
RIM_RADII, RIM_BELOW = (0.15, 0.5), 0.0
#: Earrings: where one hangs, from the near cheek to the far face edge at 40 degrees of yaw and down to the jaw, and
#: the ring template's radii and line width (the eye distance is ~6 cm: a hoop of radius 0.1 d is ~1.2 cm across).
EAR_X, EAR_Y, RING_RADII, RING_WIDTH = (0.3, 2.4), (0.5, 2.2), (0.09, 0.115, 0.14), 0.04
#: Added to L + R in each asymmetry ratio so that faint structure on both sides is no mismatch (0-255 line units:
#: the rim's mean line energy, the ring template's response).
RIM_FLOOR, RING_FLOOR = 3.0, 20.0


ARTIFACT_SCORERS: Registry = Registry("artifact scorer")


def _grid(xs: tuple[float, float], ys: tuple[float, float], n: int | tuple[int, int]) -> torch.Tensor:
    """[rows * columns, 2] sample points (x, y) at the centres of an n x n (or columns x rows) grid over the extent."""
    nx, ny = (n, n) if isinstance(n, int) else n
    gx = torch.linspace(xs[0], xs[1], nx + 1)[:-1] + (xs[1] - xs[0]) / (2 * nx)
    gy = torch.linspace(ys[0], ys[1], ny + 1)[:-1] + (ys[1] - ys[0]) / (2 * ny)
    y, x = torch.meshgrid(gy, gx, indexing="ij")
    return torch.stack([x, y], -1).reshape(-1, 2)


def _ellipse(points: torch.Tensor, cx: float, cy: float, rx: float, ry: float) -> torch.Tensor:
    return (((points[:, 0] - cx) / rx) ** 2 + ((points[:, 1] - cy) / ry) ** 2 <= 1.0).float()


def _side_points() -> tuple[tuple[int, int], torch.Tensor]:
    """The side views' (rows, columns) and their [2 * rows * columns, 2] points: the left half (x mirrored) first."""
    cols, rows = (round((hi - lo) / SIDE_STEP) for lo, hi in (SIDE_X, SIDE_Y))
    right = _grid(SIDE_X, SIDE_Y, (cols, rows))
    return (rows, cols), torch.cat([right * torch.tensor([-1.0, 1.0]), right])


def _ring_templates() -> torch.Tensor:
    """[len(RING_RADII), 1, n, n] zero-mean templates in side-view samples: +1/|ring| on a ring of RING_WIDTH,
    -1/|surround| on the discs inside it and just outside it (a sample's gap left at each edge for anti-aliasing)."""
    reach = math.ceil((max(RING_RADII) + 2.5 * RING_WIDTH) / SIDE_STEP)
    axis = torch.arange(-reach, reach + 1, dtype=torch.float32) * SIDE_STEP
    from_centre = (axis.view(-1, 1) ** 2 + axis.view(1, -1) ** 2).sqrt()
    templates = []
    for r in RING_RADII:
        off = (from_centre - r).abs()
        ring = (off <= RING_WIDTH / 2).float()
        surround = ((off > RING_WIDTH / 2 + SIDE_STEP) & (from_centre <= r + 2 * RING_WIDTH + SIDE_STEP)).float()
        templates.append(ring / ring.sum() - surround / surround.sum())
    return torch.stack(templates).unsqueeze(1)


class _Constants:
    """Sample grids and masks, built once per device (a copy mid-pass stalls the host on a GPU)."""

    def __init__(self, device: torch.device):
        head = _grid(HEAD_X, HEAD_Y, HEAD)
        eye = _grid((-EYE_HALF, EYE_HALF), (-EYE_HALF, EYE_HALF), EYE)
        excluded = torch.clamp(
            _ellipse(head, -0.5, 0.05, 0.42, 0.4) + _ellipse(head, 0.5, 0.05, 0.42, 0.4)
            + _ellipse(head, 0.0, 0.95, 0.6, 0.35), max=1.0,
        )  # fmt: skip
        face = _ellipse(head, 0.0, 0.2, 1.0, 1.3)
        self.luma = _LUMA.to(device)
        self.head, self.eye = head.to(device), eye.to(device)
        self.eye_xy = eye.T.reshape(2, 1, 1, EYE, EYE).to(device)  # x and y of each eye-patch sample
        self.droplet_area = (face * (1.0 - excluded)).view(1, 1, HEAD, HEAD).to(device)
        frame = torch.arange(FRAME, dtype=torch.float32, device=device) + 0.5
        self.frame_y, self.frame_x = frame.view(1, FRAME, 1), frame.view(1, 1, FRAME)
        (rows, cols), sides = _side_points()
        self.side_shape, self.sides = (rows, cols), sides.to(device)
        x, y = sides[rows * cols :].T.reshape(2, rows, cols)  # the right half's points
        radius = ((x - 0.5) ** 2 + y**2).sqrt()
        rim = ((radius >= RIM_RADII[0]) & (radius <= RIM_RADII[1]) & (y >= RIM_BELOW)).float()
        self.rim = (rim / rim.sum()).to(device)
        inside = lambda v, lo_hi: (v >= lo_hi[0]) & (v <= lo_hi[1])  # noqa: E731
        rows_in, cols_in = inside(y[:, 0], EAR_Y).nonzero()[:, 0], inside(x[0], EAR_X).nonzero()[:, 0]
        self.ear = (slice(int(rows_in[0]), int(rows_in[-1]) + 1), slice(int(cols_in[0]), int(cols_in[-1]) + 1))
        self.rings = _ring_templates().to(device)
        self.device = device
        self._sizes: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def sizes(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels -> grid_sample's [-1, 1] scale (x, y), and pixels -> frame-view samples (a box's 4 values)."""
        if (h, w) not in self._sizes:
            to_grid = torch.tensor([2.0 / w, 2.0 / h], device=self.device)
            to_frame = torch.tensor([FRAME / w, FRAME / h, FRAME / w, FRAME / h], device=self.device)
            self._sizes[h, w] = (to_grid, to_frame)
        return self._sizes[h, w]


_ON_DEVICE: dict[torch.device, _Constants] = {}


def _constants(device: torch.device) -> _Constants:
    if device not in _ON_DEVICE:
        _ON_DEVICE[device] = _Constants(device)
    return _ON_DEVICE[device]


_SAMPLE = dict(mode="bilinear", padding_mode="border", align_corners=False)


class Views:
    """What the scorers read, resampled once per batch on first use (all on the device), so a scorer that is off
    costs nothing."""

    def __init__(self, pixels: torch.Tensor, landmarks: torch.Tensor, boxes: torch.Tensor):
        self.k = _constants(pixels.device)
        self.pixels, self.landmarks = pixels, landmarks  # [B, H, W, 3] uint8; [B, 5, 2] pixels
        left, right = landmarks[:, 0], landmarks[:, 1]
        along = right - left
        d = along.norm(dim=1, keepdim=True).clamp_min(1.0)
        ux = along / d
        self.axes = torch.stack([ux, torch.stack([-ux[:, 1], ux[:, 0]], 1)], 1) * d.unsqueeze(2)  # [B, 2, 2]: dx̂, dŷ
        self.scale, to_frame = self.k.sizes(*pixels.shape[1:3])
        self.centre = (left + right) / 2
        self.box = boxes * to_frame  # [B, 4] face box in frame-view samples
        self.eye_distance = d.squeeze(1)  # [B] in pixels of the frame

    def _sample(self, image: torch.Tensor, origin: torch.Tensor, points: torch.Tensor, rows: int) -> torch.Tensor:
        """`image` [B, C, H, W] at eye-frame `points` [P, 2] about each `origin` ([B, 2] or [B, n, 2]): [B, C, rows,
        n * P / rows]."""
        at = origin.unsqueeze(-2) + points @ (self.axes if origin.dim() == 2 else self.axes.unsqueeze(1))
        grid = (at * self.scale - 1.0).view(image.shape[0], rows, -1, 2)
        return F.grid_sample(image, grid, **_SAMPLE)

    @cached_property
    def luma(self) -> torch.Tensor:
        return (self.pixels.to(torch.float32) @ self.k.luma).unsqueeze(1)  # [B, 1, H, W]

    @cached_property
    def head(self) -> torch.Tensor:
        """[B, 1, HEAD, HEAD] luminance 0-255 in the eye frame."""
        return self._sample(self.luma, self.centre, self.k.head, HEAD)

    @cached_property
    def eyes(self) -> torch.Tensor:
        """[B, 2, EYE, EYE] luminance around the left and the right eye."""
        return self._sample(self.luma, self.landmarks[:, :2], self.k.eye, 2 * EYE).view(-1, 2, EYE, EYE)

    @cached_property
    def frame(self) -> torch.Tensor:
        """[B, 1, FRAME, FRAME] luminance of the whole image."""
        return F.adaptive_avg_pool2d(self.luma, FRAME)

    @cached_property
    def sides(self) -> torch.Tensor:
        """[B, 3 x 2, rows, columns]: per colour, RGB 0-255 of the left and the right half, each mirrored so x runs
        outward from the eye midpoint (SIDE_X, SIDE_Y)."""
        rgb = self.pixels.permute(0, 3, 1, 2).to(torch.float32)
        rows, cols = self.k.side_shape
        return self._sample(rgb, self.centre, self.k.sides, 2 * rows).view(-1, 6, rows, cols)


def _erode(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return -F.max_pool2d(-x, size, 1, (size[0] // 2, size[1] // 2))


def _dilate(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.max_pool2d(x, size, 1, (size[0] // 2, size[1] // 2))


@ARTIFACT_SCORERS.register("catchlights")
def catchlight_mismatch(v: Views) -> torch.Tensor:
    """Per eye: the iris (the compact dark blob's soft centre), the brightest compact highlight within it and that
    highlight's offset from the iris' centre; the score is the larger of the two eyes' presence difference and their
    offsets' difference past CATCHLIGHT_TOLERANCE (0: alike, or no highlight in either, or eyes closer than
    MIN_EYE_DISTANCE pixels, too small to judge; 1: one-sided or apart)."""
    k = v.k
    dark = torch.softmax(_tophat(v.eyes, -1.0, PUPIL).flatten(2) / PUPIL_SOFTNESS, -1).view_as(v.eyes)
    iris_xy = (dark.unsqueeze(0) * k.eye_xy).sum((3, 4), keepdim=True)  # [2 (x, y), B, eye, 1, 1]
    iris = (k.eye_xy - iris_xy).square().sum(0) <= IRIS**2  # [B, eye, EYE, EYE]
    bright = _tophat(v.eyes, 1.0, 3).masked_fill(~iris, -1e4)  # nothing outside the iris
    presence = ((bright.amax((2, 3)) - HIGHLIGHT) / HIGHLIGHT_RAMP).clamp(0.0, 1.0)  # [B, eye]
    where = torch.softmax(bright.flatten(2) / HIGHLIGHT_SOFTNESS, -1).view_as(bright)
    offset = (where.unsqueeze(0) * (k.eye_xy - iris_xy)).sum((3, 4))  # [2 (x, y), B, eye]
    apart = (offset[:, :, 0] - offset[:, :, 1]).norm(dim=0)
    moved = ((apart - CATCHLIGHT_TOLERANCE) / CATCHLIGHT_OFFSET).clamp(0.0, 1.0) * presence.amin(1)
    score = torch.maximum((presence[:, 0] - presence[:, 1]).abs(), moved)
    return score * (v.eye_distance >= MIN_EYE_DISTANCE)  # smaller eyes: a highlight is a pixel or less


def _opened(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    return _dilate(_erode(x, window), window)


def _tophat(x: torch.Tensor, sign: float, window: int = TOPHAT) -> torch.Tensor:
    """Structures brighter (sign 1) or darker (-1) than their surround and narrower than TOPHAT in both
    directions: the smaller of a horizontal and a vertical top-hat, so an edge or a long strand gives none."""
    x = x * sign
    return x - torch.maximum(_opened(x, (1, window)), _opened(x, (window, 1)))


@ARTIFACT_SCORERS.register("droplets")
def droplet(v: Views) -> torch.Tensor:
    k = v.k
    return (_tophat(v.head, 1.0) * k.droplet_area).amax((1, 2, 3)) / 255.0


@ARTIFACT_SCORERS.register("background")
def background_structure(v: Views) -> torch.Tensor:
    k = v.k
    x0, y0, x1, y1 = (v.box[:, i].view(-1, 1, 1) for i in range(4))
    cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0).clamp_min(1.0), (y1 - y0).clamp_min(1.0)
    head = ((k.frame_x - cx) / bw) ** 2 + ((k.frame_y - cy + 0.15 * bh) / (1.25 * bh)) ** 2 <= 1.0
    body = ((k.frame_x - cx).abs() <= 0.75 * bw) & (k.frame_y >= cy)
    away = (~(head | body)).to(torch.float32).unsqueeze(1)  # [B, 1, FRAME, FRAME]
    share = F.avg_pool2d(away, CELL)
    mean = F.avg_pool2d(v.frame * away, CELL) / share.clamp_min(1e-3)
    square = F.avg_pool2d(v.frame.square() * away, CELL) / share.clamp_min(1e-3)
    std = (square - mean.square()).clamp_min(0.0).sqrt()
    return (std * (share >= 0.75)).amax((1, 2, 3)) / 255.0


def _extreme3(x: torch.Tensor, pick) -> torch.Tensor:
    """3 x 3 dilation (`torch.maximum`) or erosion (`torch.minimum`) of [B, C, H, W] from shifted views: 11 ops,
    the same values as a 3 x 3 max_pool2d of stride 1, which is far slower on a CPU."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    across = pick(pick(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return pick(pick(across[..., :-2, :], across[..., 1:-1, :]), across[..., 2:, :])


def _asymmetry(both: torch.Tensor, floor: float) -> torch.Tensor:
    """[B, 2] (left, right) -> |L - R| / (L + R + floor) in [0, 1)."""
    return (both[:, 0] - both[:, 1]).abs() / (both.sum(1) + floor)


@ARTIFACT_SCORERS.register("accessories")
def accessory_asymmetry(v: Views) -> torch.Tensor:
    """The larger asymmetry, left against right, of the glasses' lower rim (dark thin lines in an annulus below each
    eye) and of the strongest earring-scale ring in each ear zone; 0: alike, up to 1: on one side only."""
    k, sides = v.k, v.sides
    opened = _extreme3(_extreme3(sides, torch.minimum), torch.maximum)
    closed = _extreme3(_extreme3(sides, torch.maximum), torch.minimum)
    dark = (closed - sides).unflatten(1, (3, 2)).amax(1)  # [B, 2 (side), rows, cols]: thin dark lines
    lines = torch.maximum(dark, (sides - opened).unflatten(1, (3, 2)).amax(1))  # thin lines of either sign
    rims = (dark * k.rim).sum((2, 3))
    ears = lines[(..., *k.ear)].flatten(0, 1).unsqueeze(1)
    rings = F.conv2d(ears, k.rings).amax((1, 2, 3)).view(-1, 2)
    return torch.maximum(_asymmetry(rims, RIM_FLOOR), _asymmetry(rings, RING_FLOOR))


def artifact_scores(
    names: tuple[str, ...], pixels: torch.Tensor, landmarks: torch.Tensor, boxes: torch.Tensor, found: torch.Tensor
) -> torch.Tensor:
    """[B, len(names)] scores of the named scorers (ARTIFACT_COLUMNS order), 0 where no face was found."""
    seen = Views(pixels, landmarks, boxes)
    scores = torch.stack([ARTIFACT_SCORERS.get(name)(seen) for name in names], 1)
    return torch.where(found.view(-1, 1), scores, torch.zeros_like(scores))


def ordered(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The scorers named, in ARTIFACT_COLUMNS order (the order of the device's columns)."""
    return tuple(n for n in ARTIFACT_COLUMNS if n in names)
