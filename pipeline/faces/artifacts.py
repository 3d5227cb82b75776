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
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Views:
    """What the scorers read, resampled once per batch (all on the device)."""

    head: torch.Tensor  # [B, 1, HEAD, HEAD] luminance 0-255 in the eye frame
    eyes: torch.Tensor  # [B, 2, EYE, EYE] luminance around the left and the right eye
    frame: torch.Tensor  # [B, 1, FRAME, FRAME] luminance of the whole image
    box: torch.Tensor  # [B, 4] face box in frame-view samples
    eye_distance: torch.Tensor  # [B] in pixels of the frame


ARTIFACT_SCORERS: Registry = Registry("artifact scorer")


def _grid(xs: tuple[float, float], ys: tuple[float, float], n: int) -> torch.Tensor:
    """[n*n, 2] sample points (x, y) at the centres of an n x n grid over the extent."""
    gx = torch.linspace(xs[0], xs[1], n + 1)[:-1] + (xs[1] - xs[0]) / (2 * n)
    gy = torch.linspace(ys[0], ys[1], n + 1)[:-1] + (ys[1] - ys[0]) / (2 * n)
    y, x = torch.meshgrid(gy, gx, indexing="ij")
    return torch.stack([x, y], -1).reshape(-1, 2)


def _ellipse(points: torch.Tensor, cx: float, cy: float, rx: float, ry: float) -> torch.Tensor:
    return (((points[:, 0] - cx) / rx) ** 2 + ((points[:, 1] - cy) / ry) ** 2 <= 1.0).float()


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


def views(pixels: torch.Tensor, landmarks: torch.Tensor, boxes: torch.Tensor) -> Views:
    """The scorers' views of [B, H, W, 3] uint8 images with [B, 5, 2] landmarks and [B, 4] boxes (pixels)."""
    k = _constants(pixels.device)
    b, h, w, _ = pixels.shape
    luma = (pixels.to(torch.float32) @ k.luma).unsqueeze(1)  # [B, 1, H, W]
    left, right = landmarks[:, 0], landmarks[:, 1]
    along = right - left
    d = along.norm(dim=1, keepdim=True).clamp_min(1.0)
    ux = along / d
    axes = torch.stack([ux, torch.stack([-ux[:, 1], ux[:, 0]], 1)], 1) * d.unsqueeze(2)  # [B, 2, 2]: d*x̂, d*ŷ
    scale, to_frame = k.sizes(h, w)
    centre = (left + right) / 2
    head_grid = (centre.unsqueeze(1) + k.head @ axes) * scale - 1.0  # [B, HEAD*HEAD, 2]
    eye_grid = (landmarks[:, :2].unsqueeze(2) + (k.eye @ axes).unsqueeze(1)) * scale - 1.0  # [B, 2, EYE*EYE, 2]
    sample = dict(mode="bilinear", padding_mode="border", align_corners=False)
    head = F.grid_sample(luma, head_grid.view(b, HEAD, HEAD, 2), **sample)
    eyes = F.grid_sample(luma, eye_grid.view(b, 2 * EYE, EYE, 2), **sample).view(b, 2, EYE, EYE)
    frame = F.adaptive_avg_pool2d(luma, FRAME)
    return Views(head, eyes, frame, boxes * to_frame, d.squeeze(1))


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
    k = _constants(v.eyes.device)
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
    k = _constants(v.head.device)
    return (_tophat(v.head, 1.0) * k.droplet_area).amax((1, 2, 3)) / 255.0


@ARTIFACT_SCORERS.register("background")
def background_structure(v: Views) -> torch.Tensor:
    k = _constants(v.frame.device)
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


def artifact_scores(
    names: tuple[str, ...], pixels: torch.Tensor, landmarks: torch.Tensor, boxes: torch.Tensor, found: torch.Tensor
) -> torch.Tensor:
    """[B, len(names)] scores of the named scorers (ARTIFACT_COLUMNS order), 0 where no face was found."""
    seen = views(pixels, landmarks, boxes)
    scores = torch.stack([ARTIFACT_SCORERS.get(name)(seen) for name in names], 1)
    return torch.where(found.view(-1, 1), scores, torch.zeros_like(scores))


def ordered(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The scorers named, in ARTIFACT_COLUMNS order (the order of the device's columns)."""
    return tuple(n for n in ARTIFACT_COLUMNS if n in names)
