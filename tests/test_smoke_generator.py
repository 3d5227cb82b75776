"""The smoke-test generator: the generator contract, truncation, known attributes, and MTCNN detects it."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.faces.detect import DETECTORS, resolve
from pipeline.generators import GENERATORS, load_generator
from pipeline.generators.smoke import LABEL

from .conftest import latents_of, small_params


def test_contract_attributes_and_shapes() -> None:
    g = load_generator("smoke", resolution=64)
    assert (g.z_dim, g.c_dim, g.num_ws, g.img_resolution, g.img_channels) == (16, 0, 2, 64, 3)
    z = torch.randn(3, g.z_dim)
    ws = g.mapping(z)
    assert ws.shape == (3, g.num_ws, g.w_dim)
    img = g.synthesis(ws)
    assert img.shape == (3, 3, 64, 64) and img.min() >= -1 and img.max() <= 1
    assert torch.equal(g(z), img)
    assert "smoke-test" in g.label == LABEL
    assert "smoke" in GENERATORS.names()


def test_truncation_pulls_toward_w_avg() -> None:
    g = load_generator("smoke")
    z = torch.randn(4, g.z_dim)
    assert torch.allclose(g.mapping(z, truncation_psi=0.5), 0.5 * g.mapping(z))
    cut = g.mapping(z, truncation_psi=0.0, truncation_cutoff=1)
    assert torch.all(cut[:, 0] == 0) and torch.equal(cut[:, 1], g.mapping(z)[:, 1])


def smoke_pixels(resolution: int, n: int) -> torch.Tensor:
    """[n, H, W, 3] uint8 canonical smoke faces of identities 0..n-1."""
    g = load_generator("smoke", resolution=resolution)
    ids = np.arange(n)
    ws = latents_of(g, small_params()).ws(ids, np.zeros_like(ids))
    with torch.no_grad():
        return ((g.synthesis(ws) * 127.5 + 128).clamp(0, 255).to(torch.uint8)).permute(0, 2, 3, 1)


def test_mtcnn_detects_most_smoke_faces() -> None:
    pixels = smoke_pixels(128, 40)
    for name in DETECTORS.names():  # the batched default and facenet's reference
        det = resolve(DETECTORS.create(name, image_size=128, min_face_size=20), pixels)
        assert (det.probs > 0.9).float().mean() >= 0.9, name  # 38 of 40 measured


def test_true_attributes_follow_the_identity_layer() -> None:
    params = small_params()
    g = load_generator("smoke")
    ids = np.repeat(np.arange(20), 3)
    ws = latents_of(g, params).ws(ids, np.tile(np.arange(3), 20))
    attrs = g.true_attributes(ws)
    hair = attrs["attr_smoke_hair"].reshape(20, 3)
    assert (hair == hair[:, :1]).all()  # identity-level: same for every variant
    yaw = attrs["attr_smoke_yaw"].reshape(20, 3)
    assert (np.abs(yaw[:, 1:] - yaw[:, :1]) > 1e-3).all()  # sample-level: varies
    assert set(attrs["attr_smoke_skin"]) <= {"light", "medium", "dark"}
