"""The batched MTCNN against facenet-pytorch's own: the same faces on photographs and smoke faces, exact area
resizes, greedy NMS from parallel rounds, re-runs that change nothing, and a device loop with a fixed number
of ops and no host round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import nms

from pipeline.faces.boxes import iou
from pipeline.faces.detect import DETECTORS, FaceBoxes, FacenetMTCNN, resolve
from pipeline.faces.mtcnn import BatchedMTCNN, Capacity, Pyramid, summed_area
from pipeline.runtime.device import ieee_fp32
from pipeline.runtime.dispatch import count_dispatch

from .test_faces import photos
from .test_smoke_generator import smoke_pixels


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    return inter / (float(np.prod(a[2:] - a[:2])) + float(np.prod(b[2:] - b[:2])) - inter)


def assert_same_faces(ours: FaceBoxes, reference: FaceBoxes) -> None:
    """The issue's bar: same face counts; for matched faces IoU >= 0.95, |dprob| <= 0.01, landmarks within 1 px."""
    np.testing.assert_array_equal(ours.n_faces.numpy(), reference.n_faces.numpy())
    np.testing.assert_array_equal(ours.found.numpy(), reference.found.numpy())
    for i in np.flatnonzero(reference.found.numpy()):
        assert box_iou(ours.boxes[i].numpy(), reference.boxes[i].numpy()) >= 0.95, i
        assert abs(float(ours.probs[i] - reference.probs[i])) <= 0.01, i
        assert float((ours.landmarks[i] - reference.landmarks[i]).abs().max()) <= 1.0, i


def both(size: int, **kwargs: object) -> tuple[BatchedMTCNN, FacenetMTCNN]:
    return BatchedMTCNN(size, **kwargs), FacenetMTCNN(size, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("min_face_size", [20, 40])
def test_agrees_with_facenet_on_photographs(min_face_size: int) -> None:
    """The astronaut, two copies of her face, a blank and a noise frame, rotations and a blur; every face counted
    (count_min_prob 0), so a missing or extra face of any probability shows."""
    pixels = torch.from_numpy(np.stack(list(photos().values())))
    ours, reference = both(512, min_face_size=min_face_size, count_min_prob=0.0)
    out, ref = resolve(ours, pixels), reference(pixels)
    assert_same_faces(out, ref)
    assert ref.n_faces.tolist()[:4] == [1, 2, 0, 0]  # astronaut, two faces, blank, noise: what facenet sees


@pytest.mark.parametrize(("resolution", "min_face_size"), [(96, 20), (128, 24), (256, 51)])
def test_agrees_with_facenet_on_smoke_faces(resolution: int, min_face_size: int) -> None:
    pixels = smoke_pixels(resolution, 48)
    ours, reference = both(resolution, min_face_size=min_face_size, count_min_prob=0.0)
    out, ref = resolve(ours, pixels), reference(pixels)
    assert out.complete.all()  # the default capacity holds smoke faces: no re-run needed
    assert_same_faces(out, ref)
    assert float(ref.found.float().mean()) > 0.9


def test_a_rerun_with_more_room_gives_the_answer_of_a_larger_capacity() -> None:
    """Slots far too small flag every image; re-runs on doubled slots end where a large capacity starts."""
    pixels = torch.from_numpy(np.stack(list(photos().values())))
    tiny = Capacity(pnet=4, rnet=2, onet=1, rnet_crops=1, onet_crops=1, nms_rounds=(1, 1, 1, 1))
    roomy = Capacity(pnet=1024, rnet=256, onet=64, rnet_crops=64, onet_crops=32, nms_rounds=(16, 4, 16, 8))
    first = BatchedMTCNN(512, min_face_size=40, capacity=tiny)(pixels)
    assert not first.complete[:2].any()  # the astronaut and the two faces do not fit
    out = resolve(BatchedMTCNN(512, min_face_size=40, capacity=tiny), pixels)
    big = BatchedMTCNN(512, min_face_size=40, capacity=roomy)(pixels)
    assert big.complete.all() and out.complete.all()
    torch.testing.assert_close(out.packed, big.packed, atol=1e-4, rtol=0)


def test_a_face_does_not_depend_on_its_batch_mates() -> None:
    """Alone an image has a smaller crop pool (it may need a re-run); the faces found are the same."""
    pixels = smoke_pixels(128, 12)
    det = BatchedMTCNN(128, min_face_size=24)
    together = resolve(det, pixels)
    for i in (0, 5, 11):
        torch.testing.assert_close(resolve(det, pixels[i : i + 1]).packed[0], together.packed[i], atol=1e-4, rtol=1e-5)


def test_device_loop_has_a_fixed_op_count_and_no_host_round_trip() -> None:
    """However many candidates the images hold (faces, two faces, none, noise), one detection dispatches the
    same ops and never waits for the device."""
    det = BatchedMTCNN(512, min_face_size=40)
    images = photos()
    det(torch.from_numpy(images["blank"][None].repeat(2, 0)))  # builds tables once per image and batch size
    counts = {
        count_dispatch(lambda name=name: det(torch.from_numpy(images[name][None].repeat(2, 0)))) for name in images
    }
    assert len(counts) == 1
    ((ops, trips),) = counts
    assert trips == 0 and ops < 550


@settings(max_examples=30, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.floats(0, 60), st.floats(0, 60), st.floats(4, 30), st.floats(4, 30), st.floats(0.01, 1.0)),
        min_size=1,
        max_size=40,
    ),
    threshold=st.sampled_from([0.3, 0.5, 0.7]),
)
def test_parallel_rounds_give_greedy_nms(data: list[tuple[float, ...]], threshold: float) -> None:
    """Once settled, the rounds keep exactly what torchvision's sequential greedy NMS keeps."""
    arr = torch.tensor(data, dtype=torch.float32)
    boxes = torch.cat([arr[:, :2], arr[:, :2] + arr[:, 2:4]], 1)
    order = torch.argsort(arr[:, 4], descending=True, stable=True)
    boxes, scores = boxes[order], arr[order, 4]
    k = len(boxes)
    earlier = torch.ones(k, k, dtype=torch.bool).tril(-1)
    keep, settled = BatchedMTCNN._nms((iou(boxes[None], plus_one=False) > threshold) & earlier,
                                      torch.ones(1, k, dtype=torch.bool), k + 1)  # fmt: skip
    assert bool(settled.all())
    expected = torch.zeros(k, dtype=torch.bool)
    expected[nms(boxes, scores, threshold)] = True
    assert torch.equal(keep[0], expected)


def test_too_few_rounds_are_reported_not_hidden() -> None:
    """A chain of boxes each suppressing the next needs one round per link; with fewer it is flagged."""
    boxes = torch.tensor([[float(x), 0.0, x + 10.0, 10.0] for x in range(0, 12, 2)])[None]
    earlier = torch.ones(6, 6, dtype=torch.bool).tril(-1)
    over = (iou(boxes, plus_one=False) > 0.6) & earlier  # only neighbours overlap that much
    valid = torch.ones(1, 6, dtype=torch.bool)
    keep, settled = BatchedMTCNN._nms(over, valid, 7)
    assert bool(settled.all()) and keep[0].tolist() == [True, False, True, False, True, False]
    _, settled = BatchedMTCNN._nms(over, valid, 3)
    assert not bool(settled.all())


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(13, 90), w=st.integers(13, 90), size=st.sampled_from([5, 24, 48, 61]),
    corner=st.tuples(st.floats(0, 0.9), st.floats(0, 0.9)), extent=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)  # fmt: skip
def test_crops_from_the_summed_area_table_are_facenets_area_resize_to_the_bit(
    h: int, w: int, size: int, corner: tuple[float, float], extent: tuple[float, float]
) -> None:
    """facenet crops each box and resizes it with `interpolate(mode="area")`; the summed-area table gives
    the same floats without a per-box loop."""
    pixels = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(h * w))
    x0, y0 = int(corner[0] * w), int(corner[1] * h)
    wk, hk = max(1, int(extent[0] * (w - x0))), max(1, int(extent[1] * (h - y0)))
    det = BatchedMTCNN(max(h, w), min_face_size=12)
    frame = torch.tensor([[x0, y0, wk, hk]])
    crops = det._crops(summed_area(pixels), frame, torch.tensor([1]), size, (h, w))
    region = pixels[1:, y0 : y0 + hk, x0 : x0 + wk].permute(0, 3, 1, 2).float()
    assert torch.equal(crops, F.interpolate(region, size=(size, size), mode="area"))


def test_packed_pyramid_levels_are_facenets_resized_images() -> None:
    pixels = torch.from_numpy(photos()["astronaut"][None])
    det = BatchedMTCNN(512, min_face_size=40)
    pyr = det.pyramid(512, 512)
    canvas = det.canvas(summed_area(pixels), pyr)  # [1, 3, H, W]
    x = 0
    for scale in pyr.scales:
        size = (int(512 * scale + 1), int(512 * scale + 1))
        level = F.interpolate(pixels.permute(0, 3, 1, 2).float(), size=size, mode="area")
        assert torch.equal(canvas[:, :, : size[0], x : x + size[1]], level)
        x += size[1] + size[1] % 2


def test_pyramid_matches_facenets_scales_and_skips_impossible_cross_scale_nms() -> None:
    pyr = Pyramid(256, 256, 51, 0.709, torch.device("cpu"))
    assert pyr.scales[0] == pytest.approx(12 / 51) and len(pyr.scales) == 5
    assert not pyr.cross_scale_overlap  # at 0.709 adjacent scales' boxes differ too much in area
    assert Pyramid(256, 256, 51, 0.9, torch.device("cpu")).cross_scale_overlap


def test_batched_mtcnn_is_the_default_and_facenets_the_reference() -> None:
    from pipeline.config import DetectParams

    assert DetectParams().model == "mtcnn"
    assert isinstance(DETECTORS.create("mtcnn", image_size=128), BatchedMTCNN)
    assert isinstance(DETECTORS.create("mtcnn_facenet", image_size=128), FacenetMTCNN)


def test_face_stack_dispatches_at_most_15_ops_per_image_and_4_host_round_trips() -> None:
    """The issue's bar, at batch 64 on 256 px smoke faces: detect, align, embed, SER-FIQ and the scores in one
    device pass (pose runs on the host columns), copied to the host in at most 4 round trips."""
    from pipeline.config import validate_params

    from .conftest import analyzer_of

    pixels = smoke_pixels(256, 64)
    analyzer = analyzer_of(validate_params({"embed": {"allow_random": True}}), 256)
    analyzer(pixels)  # builds the per-size tables
    ops, trips, host_data = count_dispatch(lambda: analyzer(pixels), host_data=True)
    assert ops / 64 <= 15, ops
    assert trips <= 4, trips
    assert host_data == 0  # no tensor made from host values mid-pass (on a GPU that waits for the device)


@pytest.mark.gpu
def test_batched_mtcnn_on_cuda_agrees_with_facenet_on_the_cpu() -> None:
    """The same faces on a GPU: the summed-area table, slots and NMS rounds run as CUDA kernels."""
    pixels = smoke_pixels(256, 64)
    with ieee_fp32():  # TF32 convolutions move probabilities by ~1e-3, enough to flip a face at a threshold
        ours = resolve(BatchedMTCNN(256, device="cuda", min_face_size=51, count_min_prob=0.0), pixels.cuda())
    reference = FacenetMTCNN(256, min_face_size=51, count_min_prob=0.0)(pixels)
    assert_same_faces(FaceBoxes(ours.packed.cpu()), reference)
    detector, on_device = BatchedMTCNN(256, device="cuda", min_face_size=51), pixels.cuda()
    detector(on_device)
    _, trips = count_dispatch(lambda: detector(on_device))
    assert trips == 0
