"""SMOKE-TEST GENERATOR: a parametric face renderer for offline runs and tests, not a face model.

It follows the StyleGAN contract so the whole pipeline runs without weights: z is Gaussian,
ws has two "layers" (layer 0 = identity parameters, layer 1 = per-sample pose, expression,
lighting and background), so style mixing into layer 1 varies a person without changing who
they are, exactly as mixing into fine layers does for StyleGAN. Faces are drawn with soft
signed-distance shapes and Lambert shading; MTCNN detects most of them. The parameters that
made each face are returned by `true_attributes`, so balancing can be checked against truth.

With `plant` > 0 (`artifacts.plant`), that share of renders carries one artifact of a generated face (one-sided or
mismatched catchlights, glossy droplets, a shape or face fragment in the background, an earring on one side,
glasses broken on one side), and half of the rest carry its symmetric, clean counterpart (matched catchlights,
a pair of earrings, whole glasses) so a scorer is tested against look-alikes, not bare faces. Which one comes
from two latent coordinates that no face parameter reads (ws[:, 1, 14:16]: per variant, from (seed, identity,
variant)); `attr_smoke_artifact` and `attr_smoke_accessory` are the truth.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.generators.base import Generator
from pipeline.generators.layers import truncate_ws

LABEL = "smoke-test generator (parametric renderer, not a face model)"

IDENTITY_PARAMS = (
    "skin_tone", "hair_light", "hair_red", "face_w", "face_h", "eye_dx", "eye_r", "brow",
    "nose_len", "mouth_w", "hair_len", "fringe", "iris_r", "iris_g", "iris_b",
)  # fmt: skip
SAMPLE_PARAMS = (
    "yaw", "pitch", "roll", "scale", "tx", "ty", "bg_r", "bg_g", "bg_b", "eye_open", "smile",
    "mouth_open", "light", "light_x",
)  # fmt: skip
# Range each uniform parameter is mapped to; angles in degrees.
RANGES = {
    "face_w": (0.34, 0.46), "face_h": (0.48, 0.6), "eye_dx": (0.36, 0.46), "eye_r": (0.12, 0.17),
    "brow": (0.7, 1.3), "nose_len": (0.28, 0.38), "mouth_w": (0.32, 0.45), "hair_len": (0.9, 1.3),
    "fringe": (0.3, 0.8), "iris_r": (0.1, 0.6), "iris_g": (0.1, 0.6), "iris_b": (0.1, 0.6),
    "yaw": (-40.0, 40.0), "pitch": (-20.0, 20.0), "roll": (-15.0, 15.0), "scale": (0.85, 1.05),
    "tx": (-0.06, 0.06), "ty": (-0.06, 0.06), "bg_r": (0.15, 0.9), "bg_g": (0.15, 0.9),
    "bg_b": (0.15, 0.9), "eye_open": (0.55, 1.0), "smile": (-0.5, 1.0), "mouth_open": (0.0, 1.0),
    "light": (0.8, 1.15), "light_x": (-0.6, 0.6),
}  # fmt: skip
SKIN_BINS = ("light", "medium", "dark")
#: Planted artifacts and the clean accessories drawn as their look-alikes (`true_attributes` names them).
ARTIFACTS = ("catchlights", "droplets", "background", "earring", "glasses")
ACCESSORIES = ("catchlights", "earrings", "glasses")
_PLANT_COORDS = (14, 15)  # layer-1 coordinates past SAMPLE_PARAMS


def _soft(sdf: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sigmoid(-sdf / eps)


def _ellipse_sdf(x: torch.Tensor, y: torch.Tensor, cx, cy, rx, ry) -> torch.Tensor:
    """First-order signed distance to an axis-aligned ellipse (exact on circles)."""
    dx, dy = x - cx, y - cy
    d = torch.sqrt((dx / rx) ** 2 + (dy / ry) ** 2 + 1e-12)
    grad = torch.sqrt((dx / rx**2) ** 2 + (dy / ry**2) ** 2 + 1e-12) / d
    return (d - 1.0) / grad


class SmokeGenerator(Generator):
    """Renders faces from 2 x 16 latent layers; see the module docstring."""

    label = LABEL
    license = "Apache-2.0 (synthfaces code; no learned weights)"
    license_id = "apache-2.0"
    cpu_batch = None  # a vectorised renderer: whole batches are fastest

    def __init__(self, resolution: int = 128, plant: float = 0.0):
        super().__init__()
        self.plant = plant
        self.z_dim = self.w_dim = 16
        self.c_dim = 0
        self.num_ws = 2
        self.img_resolution = resolution
        self.img_channels = 3
        self.register_buffer("w_avg", torch.zeros(self.w_dim))
        self.sha256 = hashlib.sha256(f"synthfaces-smoke-v1:{resolution}".encode()).hexdigest()

    def mapping(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None):
        ws = z.to(torch.float32).unsqueeze(1).repeat(1, self.num_ws, 1)
        return truncate_ws(ws, self.w_avg, truncation_psi, truncation_cutoff)

    def _params(self, ws: torch.Tensor) -> dict[str, torch.Tensor]:
        u = 0.5 * (1.0 + torch.erf(ws.to(torch.float32) / math.sqrt(2.0)))  # N(0,1) -> U(0,1)
        p = {name: u[:, 0, i] for i, name in enumerate(IDENTITY_PARAMS)}
        p.update({name: u[:, 1, i] for i, name in enumerate(SAMPLE_PARAMS)})
        for name, (lo, hi) in RANGES.items():
            p[name] = lo + (hi - lo) * p[name]
        return p

    def true_attributes(self, ws: torch.Tensor) -> dict[str, np.ndarray]:
        p = {k: v.detach().cpu().numpy() for k, v in self._params(ws).items()}
        skin = np.minimum((p["skin_tone"] * 3).astype(np.int64), 2)
        return {
            "attr_smoke_hair": np.where(p["hair_light"] > 0.5, "light", "dark"),
            "attr_smoke_skin": np.asarray(SKIN_BINS, dtype=object)[skin].astype(str),
            "attr_smoke_yaw": p["yaw"].astype(np.float32),
            "attr_smoke_pitch": p["pitch"].astype(np.float32),
            "attr_smoke_roll": p["roll"].astype(np.float32),
            "attr_smoke_smile": p["smile"].astype(np.float32),
            **self._planted_truth(ws),
        }

    def _planted(self, ws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per render: the planted artifact's index in ARTIFACTS (-1: none), the clean accessory's index in
        ACCESSORIES (-1: none), and a uniform number choosing its variant (side, place)."""
        u = 0.5 * (1.0 + torch.erf(ws[:, 1, list(_PLANT_COORDS)].to(torch.float32) / math.sqrt(2.0)))
        share, rest = self.plant, (u[:, 0] - self.plant) / max(1.0 - self.plant, 1e-9)
        artifact = torch.where(u[:, 0] < share, (u[:, 0] / max(share, 1e-9) * len(ARTIFACTS)).long(), -1)
        accessory = torch.where((u[:, 0] >= share) & (rest < 0.5), (rest * 2 * len(ACCESSORIES)).long(), -1)
        return artifact.clamp_max(len(ARTIFACTS) - 1), accessory.clamp_max(len(ACCESSORIES) - 1), u[:, 1]

    def _planted_truth(self, ws: torch.Tensor) -> dict[str, np.ndarray]:
        if not self.plant:
            return {}
        artifact, accessory, _ = (t.cpu().numpy() for t in self._planted(ws))
        names = lambda index, table: np.asarray(("none", *table), dtype=object)[index + 1].astype(str)  # noqa: E731
        return {
            "attr_smoke_artifact": names(artifact, ARTIFACTS),
            "attr_smoke_accessory": names(accessory, ACCESSORIES),
        }

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const", **_: object) -> torch.Tensor:
        p = self._params(ws)
        img = _render(p, self.img_resolution, ws.device, self._planted(ws) if self.plant else None)
        return img * 2.0 - 1.0


@dataclass
class _Canvas:
    """A batch of n images being painted: per-image columns, colours and alpha blending."""

    n: int
    device: torch.device
    eps: float  # edge softness: 1.5 pixels

    def col(self, v: torch.Tensor) -> torch.Tensor:
        return v.view(self.n, 1, 1)

    def rgb(self, *values: torch.Tensor | float) -> torch.Tensor:
        return torch.stack([torch.as_tensor(v, device=self.device).expand(self.n) for v in values], 1).view(
            self.n, 3, 1, 1
        )

    @staticmethod
    def paint(img: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(1)
        return img * (1 - m) + m * colour


@dataclass
class _Face:
    """The face's frame (coordinates turned by yaw and pitch), size, colours and where its features sit."""

    fx: torch.Tensor
    fy: torch.Tensor
    fw: torch.Tensor
    fh: torch.Tensor
    yaw: torch.Tensor
    skin: torch.Tensor
    hair: torch.Tensor
    sx: torch.Tensor  # the features' shift by yaw
    eye_y: torch.Tensor


def _render(p: dict[str, torch.Tensor], size: int, device: torch.device, planted: tuple | None = None) -> torch.Tensor:
    """Draw faces back to front; returns [N, 3, size, size] in [0, 1]."""
    c = _Canvas(p["yaw"].shape[0], device, 1.5 / size)
    img, face = _head(c, p, size)
    img = _eyes(c, p, face, img)
    img = _nose_and_mouth(c, p, face, img)
    if planted is not None:
        img = _plant(c, p, face, img, *planted)
    return img.clamp(0, 1)


def _head(c: _Canvas, p: dict[str, torch.Tensor], size: int) -> tuple[torch.Tensor, _Face]:
    """Background, neck, hair and the shaded face; the face's frame for the features."""
    n, device, eps, col, rgb, paint = c.n, c.device, c.eps, c.col, c.rgb, c.paint
    lin = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    x, y = x.expand(n, size, size), y.expand(n, size, size)
    yaw, pitch, roll = (torch.deg2rad(col(p[k])) for k in ("yaw", "pitch", "roll"))
    xs, ys = (x - col(p["tx"])) / col(p["scale"]), (y - col(p["ty"])) / col(p["scale"])
    xr = xs * torch.cos(roll) + ys * torch.sin(roll)
    yr = -xs * torch.sin(roll) + ys * torch.cos(roll)

    tone = p["skin_tone"]
    skin = rgb(0.95 - 0.55 * tone, 0.78 - 0.5 * tone, 0.65 - 0.45 * tone)
    hl, hr = p["hair_light"], p["hair_red"]
    hair = rgb(0.1 + 0.75 * hl + 0.15 * hr, 0.07 + 0.6 * hl, 0.05 + 0.35 * hl - 0.03 * hr)
    img = rgb(p["bg_r"], p["bg_g"], p["bg_b"]) + torch.stack([0 * y, 0.1 * y, 0.2 * y], 1)
    fw, fh = col(p["face_w"]), col(p["face_h"])

    neck = _soft(torch.maximum(xr.abs() - 0.5 * fw, 0.3 - yr), eps)
    img = paint(img, neck, skin * 0.8)
    back_hair = _soft(_ellipse_sdf(xr, yr, 0.0, -0.12, fw * 1.12, fh * 0.95 * col(p["hair_len"])), eps)
    img = paint(img, back_hair, hair)

    fx, fy = xr - torch.sin(yaw) * 0.2, yr - torch.sin(pitch) * 0.15
    face_sdf = _ellipse_sdf(fx, fy, 0.0, 0.0, fw * torch.cos(yaw).sqrt(), fh)
    face = _soft(face_sdf, eps)
    nx, ny = (fx / fw).clamp(-1, 1), (fy / fh).clamp(-1, 1)
    nz = torch.sqrt((1 - nx**2 - ny**2).clamp(min=0.05))
    lx = col(p["light_x"])
    lambert = (nx * lx - 0.4 * ny + 0.85 * nz) / torch.sqrt(lx**2 + 0.88)
    shade = ((0.35 + 0.75 * lambert.clamp(0, 1.2)) * col(p["light"])).unsqueeze(1)
    img = img * (1 - face.unsqueeze(1)) + face.unsqueeze(1) * skin * shade
    fringe = _soft(_ellipse_sdf(fx, fy, 0.0, -fh, fw * 1.05, fh * 0.45 * col(p["fringe"])), eps)
    img = paint(img, fringe * (face + back_hair).clamp(0, 1), hair)

    sx, sy = torch.sin(yaw) * 0.6 * fw, torch.sin(pitch) * 0.5 * fh
    return img, _Face(fx, fy, fw, fh, yaw, skin, hair, sx, -0.12 * fh + sy)


def _eyes(c: _Canvas, p: dict[str, torch.Tensor], f: _Face, img: torch.Tensor) -> torch.Tensor:
    """Brows, sockets, whites, irises and pupils, looking along the head's yaw."""
    eps, col, rgb, paint = c.eps, c.col, c.rgb, c.paint
    fx, fy, fw, eye_y = f.fx, f.fy, f.fw, f.eye_y
    er = col(p["eye_r"]) * fw
    iris = rgb(p["iris_r"], p["iris_g"], p["iris_b"])
    for side in (-1.0, 1.0):
        ex = side * col(p["eye_dx"]) * fw * torch.cos(f.yaw) + f.sx
        brow = _soft(_ellipse_sdf(fx, fy, ex, eye_y - er * 1.9, er * 1.6, er * 0.38 * col(p["brow"])), eps)
        img = paint(img, brow, f.hair * 0.6)
        socket = _soft(_ellipse_sdf(fx, fy, ex, eye_y, er * 1.6, er * 1.1), eps * 4) * 0.25
        img = paint(img, socket, f.skin * 0.5)
        white = _soft(_ellipse_sdf(fx, fy, ex, eye_y, er * 1.25, er * 0.62 * col(p["eye_open"])), eps)
        img = paint(img, white, rgb(0.93, 0.92, 0.9))
        gaze = ex + torch.sin(f.yaw) * er * 0.5
        img = paint(img, _soft(_ellipse_sdf(fx, fy, gaze, eye_y, er * 0.55, er * 0.55), eps) * white, iris)
        img = paint(
            img, _soft(_ellipse_sdf(fx, fy, gaze, eye_y, er * 0.25, er * 0.25), eps) * white, rgb(0.05, 0.05, 0.05)
        )
    return img


def _nose_and_mouth(c: _Canvas, p: dict[str, torch.Tensor], f: _Face, img: torch.Tensor) -> torch.Tensor:
    eps, col, rgb, paint = c.eps, c.col, c.rgb, c.paint
    fx, fy, fw, fh, sx, skin, eye_y = f.fx, f.fy, f.fw, f.fh, f.sx, f.skin, f.eye_y
    nose_len = col(p["nose_len"]) * fh
    nose_x = sx * 1.2
    ridge = _soft(_ellipse_sdf(fx, fy, nose_x + 0.02, eye_y + nose_len * 0.55, 0.07 * fw, nose_len * 0.5), eps * 3)
    img = paint(img, ridge * 0.35, skin * 0.55)
    for side in (-1.0, 1.0):
        nostril = _soft(_ellipse_sdf(fx, fy, nose_x + side * 0.1 * fw, eye_y + nose_len, 0.06 * fw, 0.036 * fw), eps)
        img = paint(img, nostril, skin * 0.35)

    mouth_y = eye_y + nose_len + 0.17 * fh
    mw = col(p["mouth_w"]) * fw
    bend = fy - col(p["smile"]) * 0.03 * ((fx - sx) / mw) ** 2
    opening = col(p["mouth_open"])
    lips = _soft(_ellipse_sdf(fx, bend, sx, mouth_y, mw, 0.028 + 0.03 * opening), eps)
    img = paint(img, lips, rgb(0.55, 0.18, 0.2) * skin.mean(1, keepdim=True) * 1.6)
    inner = _soft(_ellipse_sdf(fx, bend, sx, mouth_y, mw * 0.8, 0.005 + 0.025 * opening), eps)
    return paint(img, inner, rgb(0.1, 0.1, 0.1))


def _ring(x, y, cx, cy, r, width) -> torch.Tensor:
    return (_ellipse_sdf(x, y, cx, cy, r, r)).abs() - width


@dataclass
class _Planting:
    """What the planted drawings share: the canvas, the face, and per render the artifact, the look-alike and the
    uniform number choosing side and variant."""

    c: _Canvas
    p: dict[str, torch.Tensor]
    f: _Face
    artifact: torch.Tensor
    accessory: torch.Tensor
    u: torch.Tensor

    def art(self, name: str) -> torch.Tensor:
        return self.c.col((self.artifact == ARTIFACTS.index(name)).float())

    def acc(self, name: str) -> torch.Tensor:
        return self.c.col((self.accessory == ACCESSORIES.index(name)).float())

    @property
    def side(self) -> torch.Tensor:
        return torch.where(self.u < 0.5, -1.0, 1.0).view(self.c.n, 1, 1)

    @property
    def variant(self) -> torch.Tensor:
        return self.c.col((self.u % 0.5 < 0.25).float())

    @property
    def er(self) -> torch.Tensor:
        return self.c.col(self.p["eye_r"]) * self.f.fw

    def eye_at(self, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        ex = s * self.c.col(self.p["eye_dx"]) * self.f.fw * torch.cos(self.f.yaw) + self.f.sx
        return ex + torch.sin(self.f.yaw) * self.er * 0.5, self.f.eye_y


def _plant(c: _Canvas, p: dict[str, torch.Tensor], f: _Face, img: torch.Tensor, artifact, accessory, u) -> torch.Tensor:
    """The planted artifacts and clean look-alikes (see the module docstring), drawn over the finished face."""
    pl = _Planting(c, p, f, artifact, accessory, u)
    for draw in (_eyes_and_skin, _background, _earrings, _glasses):
        img = draw(pl, img)
    return img


def _eyes_and_skin(pl: _Planting, img: torch.Tensor) -> torch.Tensor:
    """Catchlights: both at the light's offset (clean), or one eye's missing or moved across the iris (planted).
    Droplets: two glossy blobs, on a cheek and on the forehead."""
    c, f, eps, ir = pl.c, pl.f, pl.c.eps, pl.er * 0.55
    for s in (-1.0, 1.0):
        gx, gy = pl.eye_at(s)
        here = _soft(_ellipse_sdf(f.fx, f.fy, gx - 0.35 * ir, gy - 0.35 * ir, 0.4 * ir, 0.4 * ir), eps * 0.5)
        moved = _soft(_ellipse_sdf(f.fx, f.fy, gx + 0.4 * ir, gy + 0.3 * ir, 0.4 * ir, 0.4 * ir), eps * 0.5)
        this_side = (pl.side == s).float()
        planted = pl.art("catchlights") * torch.where(pl.variant > 0, here * (1 - this_side),
                                                      torch.where(this_side > 0, moved, here))  # fmt: skip
        img = c.paint(img, pl.acc("catchlights") * here + planted, c.rgb(1.0, 1.0, 1.0))
    for cx, cy in ((0.55, 0.25), (-0.25, -0.6)):
        blob = _soft(_ellipse_sdf(f.fx, f.fy, pl.side * cx * f.fw + f.sx, cy * f.fh, 0.07 * f.fw, 0.07 * f.fw), eps)
        img = c.paint(img, pl.art("droplets") * blob, c.rgb(1.0, 0.98, 0.93))
    return img


def _background(pl: _Planting, img: torch.Tensor) -> torch.Tensor:
    """A melted blob (three discs) or a face fragment (skin and an eye) in an upper corner."""
    c, eps, side = pl.c, pl.c.eps, pl.side
    size = img.shape[-1]
    lin = (torch.arange(size, device=c.device, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    bx, by = side * 0.84, c.col(torch.full((c.n,), -0.8, device=c.device))
    melt = torch.maximum(torch.maximum(_soft(_ellipse_sdf(x, y, bx, by, 0.12, 0.08), eps),
                                       _soft(_ellipse_sdf(x, y, bx - side * 0.08, by + 0.08, 0.07, 0.1), eps)),
                         _soft(_ellipse_sdf(x, y, bx + side * 0.03, by + 0.16, 0.06, 0.05), eps))  # fmt: skip
    here = pl.art("background")
    img = c.paint(img, here * (1 - pl.variant) * melt, c.rgb(0.75, 0.2, 0.65))
    img = c.paint(img, here * pl.variant * _soft(_ellipse_sdf(x, y, bx, by, 0.16, 0.2), eps), pl.f.skin * 0.9)
    eye = _soft(_ellipse_sdf(x, y, bx - side * 0.04, by - 0.03, 0.05, 0.025), eps)
    return c.paint(img, here * pl.variant * eye, c.rgb(0.1, 0.08, 0.08))


def _earrings(pl: _Planting, img: torch.Tensor) -> torch.Tensor:
    """A gold ring under each ear (the clean pair) or under one (planted)."""
    c, f = pl.c, pl.f
    for s in (-1.0, 1.0):
        edge = s * f.fw * torch.cos(f.yaw).sqrt() * 0.97
        ring = _soft(_ring(f.fx, f.fy, edge, 0.45 * f.fh, 0.08 * f.fw, 0.02 * f.fw), c.eps)
        worn = (pl.acc("earrings") + pl.art("earring") * (pl.side == s).float()).clamp(max=1)
        img = c.paint(img, worn * ring, c.rgb(0.95, 0.78, 0.2))
    return img


def _glasses(pl: _Planting, img: torch.Tensor) -> torch.Tensor:
    """Rims round both eyes, a bridge and arms to the face's edge; broken: one side's arm and most of its rim gone."""
    c, f, er, eps = pl.c, pl.f, pl.er, pl.c.eps
    frame = c.rgb(0.08, 0.08, 0.1)
    for s in (-1.0, 1.0):
        gx, gy = pl.eye_at(s)
        rim = _soft(_ring(f.fx, f.fy, gx, gy, 1.45 * er, 0.1 * er), eps)
        start, end = gx + s * 1.45 * er, s * f.fw * torch.cos(f.yaw).sqrt()
        along = (f.fx - (start + end) / 2).abs() - (end - start).abs() / 2
        arm = _soft(torch.maximum((f.fy - gy).abs() - 0.1 * er, along), eps)
        broken = pl.art("glasses") * (pl.side == s).float()
        whole = (pl.acc("glasses") + pl.art("glasses") * (1 - (pl.side == s).float())).clamp(max=1)
        img = c.paint(img, whole * torch.maximum(rim, arm), frame)
        img = c.paint(img, broken * rim * ((f.fy - gy) < -0.6 * er).float(), frame)
    (lx, ly), (rx, _) = pl.eye_at(-1.0), pl.eye_at(1.0)
    bridge = _soft(
        torch.maximum((f.fy - ly).abs() - 0.1 * er, (f.fx - (lx + rx) / 2).abs() - (rx - lx) / 2 + 1.4 * er), eps
    )
    return c.paint(img, (pl.acc("glasses") + pl.art("glasses")).clamp(max=1) * bridge, frame)
