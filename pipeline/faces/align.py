"""Five-point similarity alignment onto the ArcFace template, fitted and warped in batch on the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# (x, y) of left eye, right eye, nose tip, left and right mouth corner in a 112 x 112 crop.
ARCFACE_112 = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def template(size: int = 112, margin: float = 0.0) -> torch.Tensor:
    """The template for a `size` crop; `margin` shrinks the face toward the centre to show more context."""
    centred = (ARCFACE_112 - 56.0) * (1.0 - margin) + 56.0
    return centred * (size / 112.0)


def umeyama(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares similarity src -> dst (Umeyama 1991) for a batch.

    src: [B, K, 2], dst: [K, 2]. Returns M [B, 2, 3] with dst ~ M @ [src, 1] and the RMS
    residual of the fit [B] in dst units.
    """
    src = src.to(torch.float64)
    dst = dst.to(src).expand_as(src)
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum((1, 2)) / src.shape[1]
    cov = dc.transpose(1, 2) @ sc / src.shape[1]
    u, s, vh = torch.linalg.svd(cov)
    d = torch.ones_like(s)
    d[:, 1] = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    rot = u @ torch.diag_embed(d) @ vh
    scale = (s * d).sum(1) / var_s.clamp_min(1e-12)
    a = scale[:, None, None] * rot
    t = mu_d.transpose(1, 2) - a @ mu_s.transpose(1, 2)
    m = torch.cat([a, t], 2)
    fitted = src @ a.transpose(1, 2) + t.transpose(1, 2)
    residual = ((fitted - dst) ** 2).sum(2).mean(1).sqrt()
    return m.to(torch.float32), residual.to(torch.float32)


def warp(images: torch.Tensor, m: torch.Tensor, size: int) -> torch.Tensor:
    """Warp [B, C, H, W] images by pixel-space affines M [B, 2, 3] into [B, C, size, size] crops.

    Pixel coordinates are continuous (pixel i spans [i, i+1)), matching align_corners=False.
    """
    b, _, h, w = images.shape
    m = m.to(torch.float64)
    a, t = m[:, :, :2], m[:, :, 2:]
    a_inv = torch.linalg.inv(a)
    # normalised out -> out pixels -> in pixels (inverse of M) -> normalised in
    out_from_norm = torch.tensor([[size / 2.0, 0.0], [0.0, size / 2.0]], dtype=torch.float64, device=m.device)
    in_to_norm = torch.tensor([[2.0 / w, 0.0], [0.0, 2.0 / h]], dtype=torch.float64, device=m.device)
    half = torch.full((2, 1), size / 2.0, dtype=torch.float64, device=m.device)
    lin = in_to_norm @ a_inv @ out_from_norm
    offset = in_to_norm @ (a_inv @ (half - t)) - 1.0
    theta = torch.cat([lin, offset], 2).to(images.dtype)
    grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def transform_points(points: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Apply M [B, 2, 3] to points [B, K, 2]."""
    return points @ m[:, :, :2].transpose(1, 2) + m[:, :, 2].unsqueeze(1)
