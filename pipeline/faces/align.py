"""Five-point similarity alignment onto the ArcFace template, fitted and warped in batch on the device.

The fit is the closed-form least-squares similarity (rotation, uniform scale, translation; Umeyama 1991 in
2-D, never a reflection), in complex numbers: crop = z * frame + t. The warp samples the uint8 frame
bilinearly at the crop's pixel centres (grid_sample's align_corners=False convention, zeros outside),
reading only the four pixels around each sample, so a 1024 px frame is never converted to float whole.
"""

from __future__ import annotations

import torch

# (x, y) of left eye, right eye, nose tip, left and right mouth corner in a 112 x 112 crop.
ARCFACE_112 = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def template(size: int = 112, margin: float = 0.0) -> torch.Tensor:
    """The template for a `size` crop; `margin` shrinks the face toward the centre to show more context."""
    centred = (ARCFACE_112 - 56.0) * (1.0 - margin) + 56.0
    return centred * (size / 112.0)


def _complex(points: torch.Tensor) -> torch.Tensor:
    """[..., 2] (x, y) -> [...] complex x + iy."""
    return torch.view_as_complex(points.to(torch.float32).clone(memory_format=torch.contiguous_format))


def fit_similarity(
    src: torch.Tensor, dst: torch.Tensor, dst_mean: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity src -> dst as complex numbers: dst ~ z * src + t.

    src: [B, K] complex, dst: [K] complex (and its mean, when known). In 2-D the optimum is closed-form
    (Umeyama 1991 without its SVD): with centred points s and d, z = sum(conj(s) d) / sum(|s|^2), never a
    reflection. Returns z [B], t [B] and the RMS residual [B] in dst units.
    """
    mu, mu_d = src.mean(1, keepdim=True), dst.mean() if dst_mean is None else dst_mean
    s = src - mu
    z = (s.conj() * (dst - mu_d)).sum(1) / torch.view_as_real(s).square().sum((1, 2))
    t = mu_d - z * mu[:, 0]
    residual = torch.view_as_real(z[:, None] * src + t[:, None] - dst).square().sum(2).mean(1).sqrt()
    return z, t, residual


def umeyama(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`fit_similarity` on [B, K, 2] and [K, 2] points: M [B, 2, 3] with dst ~ M @ [src, 1], and the residual."""
    z, t, residual = fit_similarity(_complex(src), _complex(dst))
    a, b, tx, ty = z.real, z.imag, t.real, t.imag
    return torch.stack([torch.stack([a, -b, tx], 1), torch.stack([b, a, ty], 1)], 1), residual


class Aligner:
    """Fits five landmarks onto the template and warps frames into crops, with its constants built once."""

    def __init__(self, size: int, margin: float, device: torch.device | str = "cpu"):
        self.size = size
        self.template = template(size, margin).to(device)
        self.target = _complex(self.template)  # [K]
        self.target_mean = self.target.mean()
        c = torch.arange(size, dtype=torch.float32, device=device) + 0.5
        self.centres = torch.complex(c[None, :].expand(size, size), c[:, None].expand(size, size)).flatten()
        self.taps = torch.arange(2, device=device)
        self.device = torch.device(device)
        self._frames: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _frame_constants(self, b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per frame size, built once: tensors made from host values mid-pass would stall the host on a GPU."""
        key = (b, h, w)
        if key not in self._frames:
            limit = torch.tensor([[w], [h]], device=self.device)
            stride = torch.tensor([[1], [w]], device=self.device)
            base = (torch.arange(b, device=self.device) * (h * w))[:, None, None, None]
            self._frames[key] = (limit, stride, base)
        return self._frames[key]

    def fit(self, landmarks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """landmarks [B, 5, 2] (frame pixels) -> z, t (crop = z * frame + t) and the residual [B] in crop px."""
        return fit_similarity(_complex(landmarks), self.target, self.target_mean)

    def whole_frame(self, height: int, width: int) -> tuple[complex, complex]:
        """z and t that scale a whole frame into the crop (for an image without a face)."""
        s = self.size / max(height, width)
        return complex(s, 0.0), complex((self.size - s * width) / 2, (self.size - s * height) / 2)

    def warp(self, frames: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Warp [B, H, W, C] frames (uint8 or float) into [B, S, S, C] float32 crops in the frames' value range.

        Pixel coordinates are continuous (pixel i spans [i, i + 1)): each crop pixel centre is mapped back into
        the frame and sampled bilinearly from its four neighbours (grid_sample's align_corners=False); a
        neighbour outside the frame counts as zero.
        """
        b, h, w, c = frames.shape
        pos = torch.view_as_real((self.centres - t[:, None]) / z[:, None]) - 0.5  # [B, S*S, 2] frame pixel index
        low = pos.floor()
        frac = pos - low
        corner = low.to(torch.int64)[..., None] + self.taps  # [B, S*S, 2 (x, y), 2 (tap)]
        limit, stride, base = self._frame_constants(b, h, w)
        weight = torch.stack([1.0 - frac, frac], -1) * ((corner >= 0) & (corner < limit))
        corner = torch.minimum(corner.clamp_min(0), limit - 1) * stride
        index = corner[:, :, 1, :, None] + corner[:, :, 0, None, :] + base
        weight = weight[:, :, 1, :, None] * weight[:, :, 0, None, :]  # [B, S*S, 2 (y), 2 (x)]
        taps = frames.reshape(-1, c).index_select(0, index.flatten()).view(b, -1, 4, c).to(torch.float32)
        return (taps * weight.view(b, -1, 4, 1)).sum(2).view(b, self.size, self.size, c)


def warp(frames: torch.Tensor, m: torch.Tensor, size: int) -> torch.Tensor:
    """Warp [B, H, W, C] frames by frame -> crop similarities M [B, 2, 3] into [B, size, size, C] float32 crops."""
    aligner = Aligner(size, 0.0, frames.device)
    m = m.to(torch.float32)
    return aligner.warp(frames, torch.complex(m[:, 0, 0], m[:, 1, 0]), torch.complex(m[:, 0, 2], m[:, 1, 2]))


def transform_points(points: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Apply M [B, 2, 3] to points [B, K, 2]."""
    return points @ m[:, :, :2].transpose(1, 2) + m[:, :, 2].unsqueeze(1)
