"""Umeyama fit and grid_sample warp: known similarities are recovered and landmarks land on the template."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.faces.align import ARCFACE_112, template, transform_points, umeyama, warp


def similarity(scale: float, angle_deg: float, tx: float, ty: float) -> torch.Tensor:
    a = math.radians(angle_deg)
    return torch.tensor(
        [[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]]
    )


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(0.3, 4.0), angle=st.floats(-170, 170), tx=st.floats(-200, 200), ty=st.floats(-200, 200),
)  # fmt: skip
def test_umeyama_inverts_a_known_similarity(scale: float, angle: float, tx: float, ty: float) -> None:
    truth = similarity(scale, angle, tx, ty)
    inverse = torch.linalg.inv(torch.cat([truth, torch.tensor([[0.0, 0.0, 1.0]])]))[:2]
    src = transform_points(ARCFACE_112[None], inverse[None])  # template seen through the inverse
    m, residual = umeyama(src, ARCFACE_112)
    assert torch.allclose(transform_points(src, m), ARCFACE_112[None], atol=1e-3)
    assert float(residual[0]) < 1e-3


def test_umeyama_never_reflects() -> None:
    mirrored = ARCFACE_112.clone()
    mirrored[:, 0] = 112 - mirrored[:, 0]
    m, residual = umeyama(mirrored[None], ARCFACE_112)
    assert float(torch.linalg.det(m[0, :, :2])) > 0
    assert float(residual[0]) > 1.0  # a mirror is not a similarity: the fit cannot be exact


def test_template_scales_with_size_and_margin() -> None:
    assert torch.allclose(template(224), ARCFACE_112 * 2)
    shrunk = template(112, margin=0.5)
    assert torch.allclose(shrunk, (ARCFACE_112 - 56) * 0.5 + 56)


def test_warp_moves_marked_pixels_onto_the_template() -> None:
    """Paint dots at landmark positions in a rotated, scaled frame; after warping they sit on the template."""
    size, h, w = 112, 300, 260
    truth = similarity(1.6, 25.0, 30.0, 20.0)  # crop -> frame
    points = transform_points(ARCFACE_112[None], truth[None])[0]
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    frame = torch.zeros(5, h, w, 1)
    for k, (px, py) in enumerate(points.tolist()):
        frame[k, :, :, 0] = torch.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * 2.0**2))
    m, _ = umeyama(points[None].repeat(5, 1, 1), ARCFACE_112)
    crops = warp(frame, m, size)
    yc, xc = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for k in range(5):
        weight = crops[k, :, :, 0] / crops[k, :, :, 0].sum()
        centroid = torch.stack([(weight * xc).sum(), (weight * yc).sum()])
        assert torch.dist(centroid, ARCFACE_112[k]) < 0.5, (k, centroid)


def test_warp_identity_affine_copies_the_image() -> None:
    img = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    m = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
    assert torch.equal(warp(img, m, 64), img.float())


@settings(max_examples=25, deadline=None)
@given(
    scale=st.floats(0.5, 3.0), angle=st.floats(-60, 60), tx=st.floats(-20, 40), ty=st.floats(-20, 40),
    size=st.sampled_from([56, 112]),
)  # fmt: skip
def test_warp_matches_grid_sample(scale: float, angle: float, tx: float, ty: float, size: int) -> None:
    """The four-tap gather is torch's bilinear grid_sample (align_corners=False, zeros outside the frame)."""
    frames = torch.randint(0, 256, (2, 90, 70, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    m = similarity(scale, angle, tx, ty)[None].expand(2, 2, 3)
    inv = torch.linalg.inv(torch.cat([m[0], torch.tensor([[0.0, 0.0, 1.0]])]).double())[:2]
    h, w = frames.shape[1:3]
    # normalised crop -> crop pixels -> frame pixels -> normalised frame, as grid_sample wants it
    out_from_norm = torch.tensor([[size / 2, 0, size / 2], [0, size / 2, size / 2], [0, 0, 1]], dtype=torch.float64)
    in_to_norm = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]], dtype=torch.float64)
    theta = (in_to_norm @ torch.cat([inv, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)]) @ out_from_norm)[:2]
    grid = torch.nn.functional.affine_grid(theta[None].float().expand(2, 2, 3), [2, 3, size, size], align_corners=False)
    reference = torch.nn.functional.grid_sample(frames.permute(0, 3, 1, 2).float(), grid, align_corners=False)
    torch.testing.assert_close(warp(frames, m, size), reference.permute(0, 2, 3, 1), atol=1e-2, rtol=0)  # of 255


def test_roll_of_a_rotated_face_is_proportionate() -> None:
    from pipeline.faces.quality import geometry_scores

    angles = np.array([-20.0, 0.0, 12.0])
    lms = []
    for a in angles:
        pts = transform_points(ARCFACE_112[None], similarity(1.0, float(a), 0.0, 0.0)[None])[0]
        lms.append(pts.numpy())
    boxes = np.tile([[0, 0, 200, 200]], (3, 1)).astype(np.float32)
    roll = geometry_scores(boxes, np.stack(lms).astype(np.float32), np.ones(3, bool), (200, 200))["q_roll"]
    base = math.degrees(math.atan2(51.5014 - 51.6963, 73.5318 - 38.2946))
    np.testing.assert_allclose(roll, angles + base, atol=1e-3)
