"""MTCNN shaped for a GPU: facenet-pytorch's PNet, RNet and ONet with their shipped weights, every stage
on fixed-size tensors, so one batch is a fixed sequence of device ops with no host round trip.

facenet's `detect_face` loops in Python over pyramid scales and candidate boxes, moves boxes to the host
between stages and crops each box on its own. Here:
- the pyramid levels are packed side by side into one canvas and PNet runs once on it;
- every resize (pyramid levels and RNet/ONet crops, facenet's `area` interpolation) is read from one
  integer summed-area table of the batch, which gives the same bytes as `adaptive_avg_pool2d`;
- candidates live in fixed slots per image (`Capacity`), ranked by score; greedy NMS is a fixed
  number of parallel rounds over the slots' overlap matrix.
An image whose candidates do not fit their slots, or whose NMS has not settled, is flagged (`complete`
= 0), and the caller runs it again with larger slots (`attempt`), so the result never silently differs
from facenet's algorithm.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.faces.boxes import FaceBoxes, bbreg, default_min_face_size, iou, rerec

#: MTCNN's constants (facenet-pytorch's detect_face): PNet's cell stride and size, the stage input sizes.
STRIDE, CELL, RNET_SIZE, ONET_SIZE = 2, 12, 24, 48
#: NMS thresholds: PNet within a scale, PNet across scales, RNet, ONet ("Min" overlap), as facenet sets them.
SCALE_IOU, CROSS_SCALE_IOU, RNET_IOU, ONET_MIN = 0.5, 0.7, 0.7, 0.7
#: Added to PNet's first activations outside a level, so a max-pool window reaching past a level's
#: edge ignores those positions as facenet's ceil-mode padding does.
OUTSIDE = -1.0e4


@dataclass(frozen=True)
class Capacity:
    """Candidate slots per image entering each NMS, crops per image (on average over the batch) that RNet and
    ONet run on, and the rounds of each parallel NMS. Larger = fewer re-runs, more work on empty slots.

    Defaults from 512 smoke faces at 128 and 256 px (facenet's counts): at most 59 PNet candidates per image,
    20 PNet survivors and 12 RNet survivors; batch means at most 11.4 and 4.4. The NMS rounds: the greedy
    answer settled after at most 6, 0, 4 and 1 rounds (PNet within a scale, PNet across scales, RNet, ONet; one
    round more shows it). Across scales nothing is suppressed at factor 0.709: boxes of different scales differ
    too much in area to overlap by IoU 0.7, so that NMS is skipped (`Pyramid.cross_scale_overlap`).
    """

    pnet: int = 128
    rnet: int = 32
    onet: int = 16
    rnet_crops: int = 12
    onet_crops: int = 5
    nms_rounds: tuple[int, int, int, int] = (7, 1, 5, 2)

    def doubled(self) -> Capacity:
        return Capacity(*(2 * v for v in astuple(self)[:5]), tuple(2 * r for r in self.nms_rounds))


def pyramid_scales(height: int, width: int, min_face_size: int, factor: float) -> list[float]:
    """facenet's scale pyramid: from 12 / min_face_size down while the short side stays >= 12 px."""
    scale, short = 12.0 / min_face_size, min(height, width) * (12.0 / min_face_size)
    scales = []
    while short >= 12:
        scales.append(scale)
        scale, short = scale * factor, short * factor
    return scales


def _bins(
    n_in: int | torch.Tensor, n_out: int, offset: torch.Tensor | int = 0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """adaptive_avg_pool2d's bins: output i averages input [floor(i n_in / n_out), ceil((i + 1) n_in / n_out))."""
    i = torch.arange(n_out, device=device)
    return offset + (i * n_in) // n_out, offset + ((i + 1) * n_in + n_out - 1) // n_out


class Pyramid:
    """PNet's levels for one image size packed left to right into one canvas (each at an even x, so PNet's
    stride-2 pooling sees the same windows as on the level alone), and the tables that turn the canvas's
    output map back into facenet's candidate boxes."""

    def __init__(self, height: int, width: int, min_face_size: int, factor: float, device: torch.device):
        scales = pyramid_scales(height, width, min_face_size, factor)
        if not scales:
            raise ValueError(f"min_face_size {min_face_size} is larger than the {height}x{width} image")
        sizes = [(int(height * s + 1), int(width * s + 1)) for s in scales]
        offsets, x = [], 0
        for _, w in sizes:
            offsets.append(x)
            x += w + (w % 2)
        ch, cw = sizes[0][0], offsets[-1] + sizes[-1][1]
        rows = torch.zeros(2, ch, cw, dtype=torch.int64)  # summed-area rows [r0, r1) per canvas pixel
        cols = torch.zeros(2, ch, cw, dtype=torch.int64)
        inside = torch.zeros(ch - 2, cw - 2, dtype=torch.bool)  # PNet conv1 outputs that lie within a level
        cells, boxes, levels = [], [], []
        out_w = (cw - 2 + 1) // 2 - 4  # PNet's output map width on the canvas
        for level, ((h, w), ox, scale) in enumerate(zip(sizes, offsets, scales, strict=True)):
            r0, r1 = _bins(height, h)
            c0, c1 = _bins(width, w)
            rows[0, :h, ox : ox + w], rows[1, :h, ox : ox + w] = r0[:, None], r1[:, None]
            cols[0, :h, ox : ox + w], cols[1, :h, ox : ox + w] = c0[None], c1[None]
            inside[: h - 2, ox : ox + w - 2] = True
            oh, ow = (h - 2 + 1) // 2 - 4, (w - 2 + 1) // 2 - 4
            if oh <= 0 or ow <= 0:
                continue
            yy, xx = torch.meshgrid(torch.arange(oh), torch.arange(ow), indexing="ij")
            cells.append((yy * out_w + ox // 2 + xx).flatten())
            bb = torch.stack([xx.flatten(), yy.flatten()], 1).to(torch.float32)  # as facenet: (x, y) of the cell
            q1 = ((STRIDE * bb + 1) / scale).floor()
            q2 = ((STRIDE * bb + CELL - 1 + 1) / scale).floor()
            boxes.append(torch.cat([q1, q2], 1))
            levels.append(torch.full((oh * ow,), level, dtype=torch.int64))
        kh, kw = (rows[1] - rows[0]).clamp_min(1), (cols[1] - cols[0]).clamp_min(1)
        stride = height + 1  # the summed-area table is stored x-major (see summed_area)
        corner = torch.stack([cols[1] * stride + rows[1], cols[1] * stride + rows[0],
                              cols[0] * stride + rows[1], cols[0] * stride + rows[0]])  # fmt: skip
        self.image_size = (height, width)
        self.scales = scales
        self.canvas = (ch, cw)
        self.corners = corner.flatten().to(device)  # [4 * ch * cw] into the flattened summed-area table
        self.kh = kh.to(torch.float32).reshape(-1, 1).to(device)
        self.kw = kw.to(torch.float32).reshape(-1, 1).to(device)
        self.outside = torch.where(inside, 0.0, OUTSIDE).to(device)
        self.cells = torch.cat(cells).to(device)  # [P] positions in the flattened output map
        self.signs = torch.tensor(_SIGNS, dtype=torch.int32, device=device).view(1, 4, 1, 1)
        self.limits = torch.tensor([width, height], device=device)
        areas = [(q[:, 2:] - q[:, :2]).prod(1) for q in boxes]
        #: Whether boxes of two scales can overlap by more than IoU 0.7 (their area ratio bounds their IoU);
        #: at facenet's factor 0.709 they cannot, so the cross-scale NMS is skipped.
        self.cross_scale_overlap = any(
            float(min(a.max(), b.max()) / max(a.min(), b.min())) > CROSS_SCALE_IOU
            for i, a in enumerate(areas)
            for b in areas[i + 1 :]
        )
        table = torch.cat([torch.cat(boxes), torch.cat(levels)[:, None].to(torch.float32)], 1)
        self.table = table.to(device)  # [P, 5]: facenet's box of each cell and its level


#: Signs of the four summed-area corners of a rectangle: (r1, c1) - (r0, c1) - (r1, c0) + (r0, c0).
_SIGNS = (1, -1, -1, 1)


def summed_area(pixels: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> [B, (W + 1) * (H + 1), 3] int32, x-major: S[x, y] = sum of the pixels left of x and
    above y. Exact integers, so every box average equals adaptive_avg_pool2d's (sum / kh / kw) to the bit.
    Each prefix sum runs along an axis next to the channels (a scan across rows of a CPU tensor is 6x slower),
    with the transpose between them done by the padding copy."""
    s = pixels.cumsum(2, dtype=torch.int32)
    s = F.pad(s.transpose(1, 2), (0, 0, 1, 0, 1, 0)).cumsum(2, dtype=torch.int32)
    return s.view(s.shape[0], -1, 3)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """MTCNN's input scaling, as facenet writes it."""
    return (x - 127.5) * 0.0078125


class BatchedMTCNN:
    """MTCNN (Zhang et al. 2016) as facenet-pytorch runs it, batched on fixed-size tensors (module docstring)."""

    def __init__(
        self,
        image_size: int,
        device: str | torch.device = "cpu",
        min_face_size: int | None = None,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        count_min_prob: float = 0.9,
        capacity: Capacity | None = None,
    ):
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

        self.device = torch.device(device)
        self.min_face_size = min_face_size or default_min_face_size(image_size)
        self.thresholds, self.factor = tuple(thresholds), factor
        self.count_min_prob = max(count_min_prob, float(torch.finfo(torch.float32).tiny))  # a face has prob > 0
        self.capacity = capacity or Capacity()
        nets = (PNet(), RNet(), ONet())
        self.pnet, self.rnet, self.onet = (n.eval().requires_grad_(False).to(self.device) for n in nets)
        self._pyramids: dict[tuple[int, int], Pyramid] = {}
        self._constants: dict[tuple[str, int], Any] = {}

    def pyramid(self, height: int, width: int) -> Pyramid:
        key = (height, width)
        if key not in self._pyramids:
            self._pyramids[key] = Pyramid(height, width, self.min_face_size, self.factor, self.device)
        return self._pyramids[key]

    def _constant(self, kind: str, n: int) -> Any:
        """Small tensors built once per size: `earlier` [n, n] (slot j ranks before slot i), `rank` [n] (n, n - 1,
        ..., 1), `bins` (adaptive pooling's bin edges: steps and rounding offsets), the corner signs."""
        key = (kind, n)
        if key not in self._constants:
            i = torch.arange(n, device=self.device)
            if kind == "earlier":
                value = i[None, :] < i[:, None]
            elif kind == "rank":
                value = n - i
            elif kind == "bins":
                steps = torch.stack([i, i + 1]).view(2, 1, 1, n)
                value = (steps, torch.tensor([0, n - 1], device=self.device).view(2, 1, 1, 1))
            else:  # corner_signs: (row start/end, col start/end) of a summed-area rectangle
                value = torch.tensor([1, -1, -1, 1], dtype=torch.int32, device=self.device).view(4, 1, 1, 1, 1)
            self._constants[key] = value
        return self._constants[key]

    def __call__(self, pixels: torch.Tensor, attempt: int = 0) -> FaceBoxes:
        """pixels: [B, H, W, 3] uint8 channels-last on the device; nothing is copied to the host. Attempt n runs
        with the capacity doubled n times."""
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"MTCNN needs channels-last [B, H, W, 3] images, got shape {tuple(pixels.shape)}")
        cap = self.capacity
        for _ in range(attempt):
            cap = cap.doubled()
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            return self._detect(pixels, cap)

    def _detect(self, pixels: torch.Tensor, cap: Capacity) -> FaceBoxes:
        b, h, w = pixels.shape[:3]
        t0, t1, t2 = self.thresholds
        sat = summed_area(pixels)
        pyr = self.pyramid(h, w)

        # Stage 1: PNet once over the packed pyramid; each cell of each level is a candidate, ranked by score.
        head = self._pnet(normalise(self.canvas(sat, pyr)), pyr.outside)  # [B, 5, cells]: score, reg
        head = head.view(b, 5, -1).index_select(2, pyr.cells)
        k = min(cap.pnet, head.shape[2])
        score = head[:, 0]
        ranked, order = score.masked_fill(score < t0, -1.0).sort(dim=1, descending=True, stable=True)
        checks = [ranked[:, k : k + 1] < t0] if k < ranked.shape[1] else []  # [B, 1] each: all must hold
        valid, order = ranked[:, :k] >= t0, order[:, :k]
        cand = torch.cat([pyr.table[order], head.gather(2, order[:, None].expand(b, 5, k)).mT], 2)
        boxes, level, reg = cand[..., :4], cand[..., 4], cand[..., 6:]
        over, earlier = iou(boxes, plus_one=False), self._constant("earlier", k)
        same_level = level[:, :, None] == level[:, None, :]
        keep, settled = self._nms((over > SCALE_IOU) & same_level & earlier, valid, cap.nms_rounds[0])
        checks.append(settled)
        if pyr.cross_scale_overlap:
            keep, settled = self._nms((over > CROSS_SCALE_IOU) & earlier, keep, cap.nms_rounds[1])
            checks.append(settled)
        boxes = rerec(boxes + reg * (boxes[..., 2:] - boxes[..., :2]).repeat(1, 1, 2))

        # Stage 2: RNet on the PNet survivors (slots in PNet score order), NMS in RNet score order.
        boxes, alive, fits = self._compact(keep, cap.rnet, boxes)
        out, inside, fits2 = self._run(self.rnet, sat, pyr.limits, (h, w), boxes, alive, cap.rnet_crops, RNET_SIZE)
        checks += [fits, fits2]
        score = out[..., 5]
        ranked, order = score.masked_fill(~(alive & inside & (score > t1)), -1.0).sort(
            dim=1, descending=True, stable=True
        )
        both = _take(torch.cat([boxes, out[..., :4]], 2), order)  # box, RNet regression
        overlap = (iou(both[..., :4], plus_one=False) > RNET_IOU) & self._constant("earlier", both.shape[1])
        keep, settled = self._nms(overlap, ranked > t1, cap.nms_rounds[2])
        checks.append(settled)
        boxes = rerec(bbreg(both[..., :4], both[..., 4:]))

        # Stage 3: ONet on the RNet survivors: probabilities, landmarks, final boxes; facenet's "Min" NMS.
        boxes, alive, fits = self._compact(keep, cap.onet, boxes)
        out, inside, fits2 = self._run(self.onet, sat, pyr.limits, (h, w), boxes, alive, cap.onet_crops, ONET_SIZE)
        checks += [fits, fits2]
        score = out[..., 15]
        size = (boxes[..., 2:] - boxes[..., :2] + 1).repeat(1, 1, 5)
        marks = size * out[..., 4:14].view(b, -1, 2, 5).mT.reshape(b, -1, 10) + boxes[..., :2].repeat(1, 1, 5) - 1
        ranked, order = score.masked_fill(~(alive & inside & (score > t2)), -1.0).sort(
            dim=1, descending=True, stable=True
        )
        final = _take(torch.cat([bbreg(boxes, out[..., :4]), marks], 2), order)  # box, landmarks
        overlap = (iou(final[..., :4], plus_one=True, metric="min") > ONET_MIN) & self._constant(
            "earlier", final.shape[1]
        )
        keep, settled = self._nms(overlap, ranked > t2, cap.nms_rounds[3])
        checks.append(settled)
        return self._choose(final, ranked.masked_fill(~keep, 0.0), torch.cat(checks, 1).all(1, keepdim=True))

    @staticmethod
    def canvas(sat: torch.Tensor, pyr: Pyramid) -> torch.Tensor:
        """The pyramid's levels side by side, each facenet's area resize of the image: [B, 3, H, W] float32,
        channels-last (zeros between levels)."""
        corners = sat.index_select(1, pyr.corners).view(sat.shape[0], 4, -1, 3)
        means = (corners * pyr.signs).sum(1).to(torch.float32) / pyr.kh / pyr.kw
        return means.view(sat.shape[0], *pyr.canvas, 3).permute(0, 3, 1, 2)

    def _pnet(self, x: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
        """PNet's layers with the positions outside every level masked before the first max-pool; returns
        [B, 5, H', W']: face probability, then the four box regressions."""
        p = self.pnet
        x = p.prelu1(p.conv1(x)) + outside
        x = p.prelu3(p.conv3(p.prelu2(p.conv2(p.pool1(x)))))
        return torch.cat([p.softmax4_1(p.conv4_1(x))[:, 1:], p.conv4_2(x)], 1)

    @staticmethod
    def _nms(suppress: torch.Tensor, valid: torch.Tensor, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy NMS as parallel rounds: `suppress` [B, i, j] = slot j ranks before slot i and overlaps it too
        much. A valid slot is kept when no kept slot suppresses it: keep = max(0, valid - suppress @ keep).
        Round t settles every slot whose chain of earlier suppressing slots is shorter than t; two equal last
        rounds mean a fixed point, and the greedy answer is the only fixed point. Returns the kept slots
        [B, K] and whether each image settled [B, 1]."""
        v = valid[..., None].to(torch.float32)
        suppress = suppress.to(torch.float32)  # an invalid slot never suppresses: its keep is 0 from the start
        keep = previous = v
        for _ in range(rounds):
            previous, keep = keep, torch.baddbmm(v, suppress, keep, alpha=-1.0).clamp_min(0.0)
        return keep[..., 0] > 0, (keep == previous).all(1)

    def _compact(self, keep: torch.Tensor, k: int, boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The boxes of the first k kept slots of each image, in slot order; which of the k slots hold one;
        whether all kept slots fit."""
        n = keep.shape[1]
        k = min(k, n)
        top, order = torch.where(keep, self._constant("rank", n), 0).topk(k, 1)
        return _take(boxes, order), top > 0, keep.sum(1, keepdim=True) <= k

    def _run(
        self,
        net: torch.nn.Module,
        sat: torch.Tensor,
        limits: torch.Tensor,
        hw: tuple[int, int],
        boxes: torch.Tensor,
        alive: torch.Tensor,
        per_image: int,
        size: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`net` on facenet's crops of the alive slots, gathered into one pool of B x per_image crops (the
        first alive slots in image order): its outputs concatenated per slot [B, K, C] (zeros off the pool),
        whether each box overlaps the image, and whether all of an image's alive slots fit the pool."""
        b, k = alive.shape
        n = b * k
        pool = min(n, b * per_image)
        slots = torch.where(alive.flatten(), self._constant("rank", n), 0).topk(pool)[1]
        frame, inside = _crop_frames(boxes, limits)
        crops = self._crops(sat, frame.view(n, 4).index_select(0, slots), slots // k, size, hw)
        out = torch.cat(net(normalise(crops)), 1)
        out = out.new_zeros(n, out.shape[1]).index_copy(0, slots, out).view(b, k, -1)
        return out, inside, alive.sum(1, keepdim=True).cumsum(0) <= pool

    def _crops(
        self, sat: torch.Tensor, frame: torch.Tensor, image: torch.Tensor, size: int, hw: tuple[int, int]
    ) -> torch.Tensor:
        """facenet's area resize of each frame (x0, y0, width, height; whole pixels) of image `image` to size x
        size, read from the summed-area table: [N, 3, size, size] float32, channels-last."""
        h1 = hw[0] + 1
        steps, offsets = self._constant("bins", size)  # [2, 1, 1, size] steps i / i + 1, [2, 1, 1, 1] 0 / size - 1
        origin, extent = frame.view(1, -1, 2, 2, 1).unbind(2)  # [1, N, 2 (x, y), 1] each
        # edges[e, n, axis, i]: bin i's start (e = 0) or end (e = 1) along x (axis 0) or y (axis 1).
        edges = (steps * extent + offsets) // size + origin
        cols = edges[:, :, 0] * h1 + image[:, None] * (h1 * (hw[1] + 1))  # [2, N, size]; the table is x-major
        index = edges[:, None, :, 1, :, None] + cols[None, :, :, None, :]  # [2 (row), 2 (col), N, size, size]
        total = sat.view(-1, 3).index_select(0, index.flatten()).view(4, -1, size, size, 3)
        total = (total * self._constant("corner_signs", 4)).sum(0).to(torch.float32)
        widths, heights = (edges[1] - edges[0]).to(torch.float32).unbind(1)  # [N, size] each
        return (total / heights[:, :, None, None] / widths[:, None, :, None]).permute(0, 3, 1, 2)

    def _choose(self, final: torch.Tensor, probs: torch.Tensor, complete: torch.Tensor) -> FaceBoxes:
        """Per image the most probable kept face, then the largest (final: [B, K, 14] box and landmarks)."""
        best_prob = probs.amax(1, keepdim=True)
        area = (final[..., 2:4] - final[..., :2]).prod(-1)
        best = area.masked_fill(probs != best_prob, -torch.inf).argmax(1, keepdim=True)
        chosen = _take(final, best)[:, 0].masked_fill(best_prob <= 0, 0.0)
        n_faces = (probs >= self.count_min_prob).sum(1, keepdim=True)
        return FaceBoxes(torch.cat([chosen[:, :4], best_prob, chosen[:, 4:], n_faces, complete], 1))


def _crop_frames(boxes: torch.Tensor, limits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """facenet's `pad`: each box's corners truncated, the top left raised to 1 and the bottom right lowered to
    (w, h); the crop is [x - 1, ex) x [y - 1, ey). Returns (x0, y0, width, height) [B, K, 4] int64 (kept inside
    the image for empty boxes) and whether the crop is non-empty."""
    corners = boxes.trunc().to(torch.int64)
    top_left, bottom_right = corners[..., :2].clamp_min(1), torch.minimum(corners[..., 2:], limits)
    inside = (bottom_right > top_left - 1).all(-1)
    origin = torch.minimum(top_left - 1, limits - 1)
    return torch.cat([origin, (bottom_right - origin).clamp_min(1)], -1), inside


def _take(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x [B, K, C] reordered along K by order [B, K']."""
    return x.gather(1, order[..., None].expand(-1, -1, x.shape[2]))
