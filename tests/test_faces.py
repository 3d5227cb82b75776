"""The face stack on real photographs that ship with scikit-image (the astronaut) and images made from
it: detection, alignment, rejection reasons, roll; SER-FIQ properties that hold whatever the weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data

from pipeline.config import FilterParams
from pipeline.curation.filter import apply_filter
from pipeline.faces.align import transform_points, umeyama
from pipeline.faces.detect import DETECTORS, resolve

from .conftest import analyzer_of, small_params

CPU = torch.device("cpu")
FACE_CENTRE = (225, 115)


def photos() -> dict[str, np.ndarray]:
    astro = data.astronaut()
    pil = Image.fromarray(astro)
    face = astro[30:210, 140:310]
    two = np.full_like(astro, 90)
    two[150:330, 40:210] = face
    two[150:330, 290:460] = face
    return {
        "astronaut": astro,
        "two_faces": two,
        "blank": np.full_like(astro, 128),
        "noise": np.random.default_rng(0).integers(0, 256, astro.shape, dtype=np.uint8),
        "blurred": np.asarray(pil.filter(ImageFilter.GaussianBlur(4))),
        "rot+15": np.asarray(pil.rotate(15, center=FACE_CENTRE, resample=Image.BILINEAR)),
        "rot-25": np.asarray(pil.rotate(-25, center=FACE_CENTRE, resample=Image.BILINEAR)),
    }


@pytest.fixture(scope="module")
def analysed() -> pd.DataFrame:
    images = photos()
    analyzer = analyzer_of(small_params(detect={"min_face_size": 40}, embed={"serfiq_passes": 8}), 512)
    result = analyzer(torch.from_numpy(np.stack(list(images.values()))))
    cols = {k: v for k, v in result.columns.items() if k not in ("box", "landmarks", "embedding")}
    df = pd.DataFrame(cols, index=list(images))
    df["key"], df["identity"], df["variant"] = [f"{i:09d}_000" for i in range(len(df))], range(len(df)), 0
    df["q_finite"], df["q_disc"] = 1.0, np.nan
    return df


def test_astronaut_detected_with_high_probability(analysed: pd.DataFrame) -> None:
    assert analysed.loc["astronaut", "det_prob"] > 0.99
    assert analysed.loc["astronaut", "n_faces"] == 1


def test_rejections_carry_the_right_reason(analysed: pd.DataFrame) -> None:
    params = FilterParams(min_det_prob=0.9, min_sharpness=50.0, max_roll_deg=45, min_face_fraction=0.02)
    reasons = dict(zip(analysed.index, apply_filter(analysed, params)["reason"], strict=True))
    assert reasons == {
        "astronaut": "",
        "two_faces": "multi_face",
        "blank": "no_face",
        "noise": "no_face",
        "blurred": "blurry",
        "rot+15": "",
        "rot-25": "",
    }


def test_roll_follows_the_rotation(analysed: pd.DataFrame) -> None:
    base = analysed.loc["astronaut", "q_roll"]
    # PIL rotates counter-clockwise for positive angles; with y pointing down the eye line's angle drops.
    assert analysed.loc["rot+15", "q_roll"] - base == pytest.approx(-15, abs=4)
    assert analysed.loc["rot-25", "q_roll"] - base == pytest.approx(25, abs=4)


def test_warped_landmarks_land_where_the_transform_puts_them() -> None:
    """Landmarks re-detected in the warped crop are within 1.5 px RMS (112 px template units) of the
    detected landmarks mapped by the fitted similarity: the pixel warp and the fit agree."""
    size = 224
    images = photos()
    pixels = torch.from_numpy(np.stack([images["astronaut"], images["rot+15"], images["rot-25"]]))
    analyzer = analyzer_of(small_params(detect={"min_face_size": 40}, align={"size": size, "margin": 0.2}), 512)
    det = resolve(analyzer.detector, pixels)
    crops, _ = analyzer.align(pixels, det)
    m, _ = umeyama(det.landmarks, analyzer.aligner.template)
    expected = transform_points(det.landmarks, m)
    again = resolve(DETECTORS.create("mtcnn", image_size=size, min_face_size=20), crops)
    rms = ((again.landmarks - expected) ** 2).sum(-1).mean(-1).sqrt() * (112 / size)
    assert (again.probs > 0.99).all()
    assert (rms < 1.5).all(), rms


def test_serfiq_range_reproducible_batch_independent_and_maximal_without_dropout() -> None:
    analyzer = analyzer_of(small_params(), 512)
    crops = torch.randint(0, 256, (4, 112, 112, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = analyzer.embedder.features(crops)
    q = analyzer.embedder.serfiq(features, 20)
    assert ((q > 0) & (q <= 1)).all()
    assert torch.equal(q, analyzer.embedder.serfiq(features, 20))  # reproducible
    torch.testing.assert_close(q[1:], analyzer.embedder.serfiq(features[1:], 20), rtol=1e-6, atol=1e-7)
    assert len(set(q.tolist())) == 4  # the masks are shared, the crops are not
    twice = analyzer.embedder.serfiq(features[[0, 0]], 20)
    assert twice[0] == twice[1]  # equal crops score the same: a function of the crop alone
    torch.testing.assert_close(analyzer.embedder.serfiq(features, 20, dropout=0.0), torch.ones(4))


def test_serfiq_needs_one_backbone_pass_per_image() -> None:
    """SER-FIQ's stochastic passes reuse the backbone's features: the backbone runs as often with 50 passes as
    without SER-FIQ, once per image."""
    from .test_smoke_generator import smoke_pixels

    pixels = smoke_pixels(128, 6)
    calls = []
    for passes in (50, 0):
        analyzer = analyzer_of(small_params(embed={"serfiq_passes": passes}), 128)
        seen: list[int] = []
        net = analyzer.embedder.net
        hook = net.conv2d_1a.register_forward_hook(lambda mod, inp, out, seen=seen: seen.append(inp[0].shape[0]))
        try:
            analyzer(pixels)
        finally:
            hook.remove()
        calls.append(seen)
    assert calls[0] == calls[1] and sum(calls[0]) >= 6


def test_folded_embedder_matches_facenets_network() -> None:
    """BatchNorms and block scales folded into the convolutions: the same embeddings as facenet's own forward."""
    from facenet_pytorch import InceptionResnetV1

    from pipeline.faces.embed import RANDOM_INIT_SEED, TRAINING_CLASSES

    analyzer = analyzer_of(small_params(embed={"input_size": 160}), 512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        reference = InceptionResnetV1(classify=False, num_classes=TRAINING_CLASSES["vggface2"]).eval()
    crops = torch.randint(0, 256, (3, 112, 112, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(analyzer.embedder.preprocess(crops))
    torch.testing.assert_close(analyzer.embedder(crops), expected, atol=1e-5, rtol=1e-4)
