"""StyleGAN2 / StyleGAN3 in pure PyTorch: loaded from pickles in NVIDIA's format without running their
code, and checked against independent computations (per-sample convolution, scipy's upfirdn, numpy)."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from pipeline.generators import load_discriminator, load_generator
from pipeline.generators.checkpoint import load_networks, save_checkpoint
from pipeline.generators.network_pickle import (
    NetworkPickleError,
    UnsafePickleError,
    read_network_pickle,
    state_dict_of,
)
from pipeline.generators.ops import filtered_lrelu, setup_filter, upfirdn2d
from pipeline.generators.stylegan2 import StyleGAN2Generator, modulated_conv2d
from pipeline.generators.stylegan2_discriminator import Discriminator, MinibatchStdLayer
from pipeline.generators.stylegan3 import StyleGAN3Generator, design_lowpass_filter
from pipeline.runtime.device import autocast
from pipeline.weights import WeightsStore

from .nvidia_format import fake_nvidia_modules, write_network_pickle

SG2 = dict(
    z_dim=32,
    c_dim=0,
    w_dim=32,
    img_resolution=32,
    img_channels=3,
    mapping_kwargs={"num_layers": 2},
    synthesis_kwargs={"channel_base": 1024, "channel_max": 64, "num_fp16_res": 0, "conv_clamp": 256},
)
SG2_FLAT_COND = dict(
    z_dim=16,
    c_dim=4,
    w_dim=32,
    img_resolution=64,
    img_channels=3,
    mapping_kwargs={"num_layers": 3},
    channel_base=1024,
    channel_max=32,
    num_fp16_res=2,
    conv_clamp=256,
    fused_modconv_default="inference_only",
)
SG3_T = dict(
    z_dim=32,
    c_dim=0,
    w_dim=32,
    img_resolution=32,
    img_channels=3,
    mapping_kwargs={"num_layers": 2},
    channel_base=1024,
    channel_max=64,
    magnitude_ema_beta=0.999,
)
SG3_R = dict(SG3_T, conv_kernel=1, use_radial_filters=True, channel_base=2048, channel_max=128)
D_KW = dict(
    c_dim=0,
    img_resolution=32,
    img_channels=3,
    channel_base=1024,
    channel_max=64,
    num_fp16_res=0,
    conv_clamp=256,
    block_kwargs={"freeze_layers": 0},
    mapping_kwargs={},
    epilogue_kwargs={"mbstd_group_size": 4},
)
ARCHS = {
    "stylegan2": (StyleGAN2Generator, SG2),
    "stylegan2-flat-conditional": (StyleGAN2Generator, SG2_FLAT_COND),
    "stylegan3-t": (StyleGAN3Generator, SG3_T),
    "stylegan3-r": (StyleGAN3Generator, SG3_R),
}


def randomised(cls: type, kwargs: dict, seed: int = 0) -> torch.nn.Module:
    """A network with random weights and non-trivial noise strengths, w_avg and magnitude EMAs."""
    torch.manual_seed(seed)
    net = cls(**kwargs).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
        for name, b in net.named_buffers():
            if name.endswith("w_avg"):
                b.normal_()
            if name.endswith("magnitude_ema"):
                b.fill_(1.7)
    return net


@pytest.fixture(scope="module", params=sorted(ARCHS))
def pickled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, torch.nn.Module, Path, Path]:
    cls, kwargs = ARCHS[request.param]
    net = randomised(cls, kwargs)
    folder = tmp_path_factory.mktemp(request.param)
    marker = folder / "module_src_ran"
    d_kwargs = dict(D_KW, img_resolution=kwargs["img_resolution"], c_dim=kwargs["c_dim"])
    disc = randomised(Discriminator, d_kwargs, seed=1)
    path = folder / "network.pkl"
    write_network_pickle(path, net, kwargs, disc, d_kwargs, marker=marker)
    return request.param, net, path, marker


def inputs(net: torch.nn.Module, n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, net.z_dim, generator=g)
    c = F.one_hot(torch.arange(n) % net.c_dim, net.c_dim).float() if net.c_dim else None
    return z, c


def test_pickle_loads_into_identical_outputs(pickled, tmp_path: Path) -> None:
    arch, net, path, marker = pickled
    loaded = load_generator(str(path), weights=WeightsStore(tmp_path, tmp_path / "lock.json"))
    assert not marker.exists(), "module_src was executed"
    assert (loaded.z_dim, loaded.c_dim, loaded.w_dim, loaded.num_ws, loaded.img_resolution, loaded.img_channels) == (
        net.z_dim,
        net.c_dim,
        net.w_dim,
        net.num_ws,
        net.img_resolution,
        net.img_channels,
    )
    z, c = inputs(net)
    for psi, cutoff in [(1.0, None), (0.7, None), (0.5, 2)]:
        ws = loaded.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)
        assert ws.shape == (4, net.num_ws, net.w_dim)
        assert torch.equal(ws, net.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff))
    for mode in ("const", "none"):
        img = loaded(z, c, truncation_psi=0.7, noise_mode=mode, force_fp32=True)
        assert img.shape == (4, 3, net.img_resolution, net.img_resolution) and torch.isfinite(img).all()
        assert torch.equal(img, net(z, c, truncation_psi=0.7, noise_mode=mode, force_fp32=True))
    if arch.startswith("stylegan2"):
        const = loaded(z, c, noise_mode="const", force_fp32=True)
        assert not torch.equal(const, loaded(z, c, noise_mode="none", force_fp32=True))  # noise matters
        assert torch.equal(const, loaded(z, c, noise_mode="const", force_fp32=True))  # const is deterministic
    assert len(loaded.sha256) == 64 and loaded.label == "network.pkl"


def test_discriminator_loads_with_the_generator(pickled, tmp_path: Path) -> None:
    _, net, path, _ = pickled
    disc = load_discriminator(str(path), weights=WeightsStore(tmp_path, tmp_path / "lock.json"))
    z, c = inputs(net)
    img = net(z, c, force_fp32=True)
    logits = disc(img, c, force_fp32=True)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()
    reference = load_networks(path)["D"]
    assert torch.equal(logits, reference(img, c, force_fp32=True))


def test_state_walk_matches_state_dict_order(pickled) -> None:
    _, net, path, _ = pickled
    data = read_network_pickle(path)
    walked = state_dict_of(data["G_ema"])
    assert list(walked) == list(net.state_dict())
    assert all(torch.equal(walked[k], v) for k, v in net.state_dict().items())
    assert data["G_ema"].init_kwargs["z_dim"] == net.z_dim


def test_own_checkpoint_round_trip(pickled, tmp_path: Path) -> None:
    _, net, path, _ = pickled
    loaded = load_networks(path)["G_ema"]
    save_checkpoint(loaded, tmp_path / "g.pt")
    again = load_generator(str(tmp_path / "g.pt"), weights=WeightsStore(tmp_path, tmp_path / "lock.json"))
    z, c = inputs(net)
    assert torch.equal(again(z, c, force_fp32=True), net(z, c, force_fp32=True))


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ("import os\nclass E:\n    def __reduce__(self): return (os.system, ('echo pwned',))", "posix.system"),
        ("class E:\n    def __reduce__(self): return (eval, ('1+1',))", "builtins.eval"),
        ("class E:\n    def __reduce__(self): return (exec, ('x=1',))", "builtins.exec"),
        ("class E:\n    def __reduce__(self): return (getattr, (1, 'real'))", "builtins.getattr"),
        (
            "import subprocess\nclass E:\n    def __reduce__(self): return (subprocess.check_output, (['true'],))",
            "subprocess.check_output",
        ),
    ],
)
def test_hostile_globals_are_refused(tmp_path: Path, payload: str, named: str) -> None:
    scope: dict = {}
    exec(payload, scope)  # builds the hostile object in this test only
    blob = pickle.dumps({"G_ema": scope["E"]()}, protocol=4)
    with pytest.raises(UnsafePickleError, match=named.replace(".", r"\.")):
        read_network_pickle(io.BytesIO(blob))


def test_hostile_global_deep_inside_a_network_is_refused(tmp_path: Path) -> None:
    net = randomised(StyleGAN2Generator, SG2)
    net.synthesis.b4.conv1._buffers["noise_const"] = _Hostile()
    path = tmp_path / "evil.pkl"
    write_network_pickle(path, net, SG2)
    with pytest.raises(UnsafePickleError, match=r"posix\.system"):
        load_generator(str(path), weights=WeightsStore(tmp_path, tmp_path / "lock.json"))


class _Hostile:
    def __reduce__(self) -> tuple:
        return os.system, (f"touch {os.devnull}",)


@pytest.mark.parametrize("damage", ["truncate", "html", "empty", "garbage"])
def test_damaged_files_are_refused_with_a_reason(pickled, tmp_path: Path, damage: str) -> None:
    _, _, path, _ = pickled
    bad = tmp_path / "bad.pkl"
    data = path.read_bytes()
    bad.write_bytes(
        {
            "truncate": data[: len(data) // 2],
            "html": b"<!DOCTYPE html><html><body>404</body></html>",
            "empty": b"",
            "garbage": b"\x80\x04garbage" * 10,
        }[damage]
    )
    with pytest.raises(NetworkPickleError) as info:
        load_networks(bad)
    assert {"truncate": "not a readable network pickle", "html": "HTML", "empty": "empty", "garbage": "not a readable"}[
        damage
    ] in str(info.value)


def test_mapping_matches_a_numpy_computation() -> None:
    net = randomised(StyleGAN2Generator, SG2)
    z, _ = inputs(net)
    x = z.double().numpy()
    x = x / np.sqrt((x**2).mean(1, keepdims=True) + 1e-8)
    for idx in range(2):
        fc = getattr(net.mapping, f"fc{idx}")
        w = fc.weight.double().numpy() * fc.weight_gain
        b = fc.bias.double().numpy() * fc.bias_gain
        x = x @ w.T + b
        x = np.where(x >= 0, x, 0.2 * x) * np.sqrt(2)
    w_avg = net.mapping.w_avg.double().numpy()
    ws = net.mapping(z, None, truncation_psi=0.6).double().numpy()
    np.testing.assert_allclose(ws, np.repeat((w_avg + 0.6 * (x - w_avg))[:, None], net.num_ws, 1), atol=1e-5)
    cut = net.mapping(z, None, truncation_psi=0.6, truncation_cutoff=3).double().numpy()
    np.testing.assert_allclose(cut[:, 3:], np.repeat(x[:, None], net.num_ws - 3, 1), atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_matches_per_sample_convolution(up: int, demodulate: bool, fused: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64)
    styles = torch.randn(3, 5, generator=g, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1]).double()
    got = modulated_conv2d(
        x, weight, styles, up=up, padding=1, resample_filter=f, demodulate=demodulate, flip_weight=(up == 1)
    )
    for i in range(3):
        w = weight * styles[i].reshape(1, -1, 1, 1)
        if demodulate:
            w = w * (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).rsqrt()
        if up == 1:
            ref = F.conv2d(x[i : i + 1], w, padding=1)
        else:  # transposed conv == zero-insertion upsample then true convolution, then the [1,3,3,1] blur (x4 gain)
            zero = torch.zeros(1, 5, 16, 16, dtype=torch.float64)
            zero[:, :, ::2, ::2] = x[i : i + 1]
            conv = F.conv2d(F.pad(zero, [2, 1, 2, 1]), w.flip([2, 3]))
            ref = upfirdn2d(conv, f, padding=[1, 1, 1, 1], gain=4)
        torch.testing.assert_close(got[i : i + 1], ref, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize(("up", "down", "taps"), [(1, 1, 4), (2, 1, 4), (1, 2, 4), (2, 2, 12), (4, 1, 12)])
def test_upfirdn2d_matches_scipy(up: int, down: int, taps: int) -> None:
    rng = np.random.default_rng(taps + up)
    x = rng.standard_normal((2, 3, 9, 11))
    f = rng.random(taps)
    got = upfirdn2d(torch.from_numpy(x), torch.from_numpy(f), up=up, down=down, padding=[taps - 1] * 4).numpy()
    # scipy.signal.upfirdn: upsample, filter (full convolution), downsample; separable along both axes.
    # Ours also keeps the up-1 trailing zeros after the last sample, so it may run a few outputs longer.
    ref = scipy.signal.upfirdn(f, x, up=up, down=down, axis=3)
    ref = scipy.signal.upfirdn(f, ref, up=up, down=down, axis=2)
    h, w = ref.shape[2:]
    assert 0 <= got.shape[2] - h <= up and 0 <= got.shape[3] - w <= up
    np.testing.assert_allclose(got[:, :, :h, :w], ref, atol=1e-9)


def test_filtered_lrelu_matches_a_scipy_pipeline() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 10, 10))
    fu, fd = design_lowpass_filter(12, 3.0, 2.0, 16.0), design_lowpass_filter(12, 3.0, 2.0, 16.0)
    b = rng.standard_normal(2)
    got = filtered_lrelu(
        torch.from_numpy(x),
        fu.double(),
        fd.double(),
        torch.from_numpy(b),
        up=2,
        down=2,
        padding=[11, 10, 11, 10],
        gain=np.sqrt(2),
        slope=0.2,
        clamp=256,
    ).numpy()
    y = x + b.reshape(1, -1, 1, 1)
    fu2 = fu.double().numpy() * 2  # gain up**2 split over the two separable passes
    y = np.pad(np.kron(y, np.array([[1, 0], [0, 0]])), [(0, 0), (0, 0), (11, 10), (11, 10)])[:, :, :, :]
    y = scipy.signal.convolve(y, fu2[None, None, :, None] * fu2[None, None, None, :], mode="valid")
    y = np.clip(np.where(y >= 0, y, 0.2 * y) * np.sqrt(2), -256, 256)
    y = scipy.signal.convolve(
        y, fd.double().numpy()[None, None, :, None] * fd.double().numpy()[None, None, None, :], mode="valid"
    )
    np.testing.assert_allclose(got, y[:, :, ::2, ::2], atol=1e-9)


def test_radial_filter_is_symmetric_and_normalised() -> None:
    f = design_lowpass_filter(12, 5.0, 4.0, 32.0, radial=True).numpy()
    assert f.shape == (12, 12)
    np.testing.assert_allclose(f.sum(), 1.0, atol=1e-6)
    np.testing.assert_allclose(f, f.T, atol=1e-7)
    np.testing.assert_allclose(f, f[::-1, ::-1], atol=1e-7)


def test_minibatch_std_matches_numpy() -> None:
    x = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    got = MinibatchStdLayer(4)(x).numpy()
    a = x.numpy().reshape(4, 2, 1, 4, 3, 3)
    std = np.sqrt(((a - a.mean(0)) ** 2).mean(0) + 1e-8).mean(axis=(2, 3, 4))  # [n=2, F=1]
    expected = np.tile(std.reshape(1, 2, 1), (4, 1, 1)).reshape(8, 1)
    np.testing.assert_allclose(got[:, 4, 0, 0], expected[:, 0], atol=1e-12)
    np.testing.assert_allclose(got[:, :4], x.numpy())


def test_noise_seeds_make_random_noise_reproducible_per_sample() -> None:
    net = randomised(StyleGAN2Generator, SG2)
    z, _ = inputs(net, n=2)
    ws = net.mapping(z, None)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    a = net.synthesis(ws, noise_mode="random", noise_generators=gens([1, 2]))
    b = net.synthesis(ws[1:], noise_mode="random", noise_generators=gens([2]))
    torch.testing.assert_close(a[1:], b, atol=1e-5, rtol=1e-5)


def test_nothing_written_by_module_src_even_in_a_fresh_process(pickled, tmp_path: Path) -> None:
    _, _, path, marker = pickled
    code = f"from pipeline.generators.checkpoint import load_networks; load_networks({str(path)!r})"
    subprocess.run(["python", "-c", code], check=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert not marker.exists()


def test_fake_modules_are_removed_after_writing() -> None:
    import sys

    with fake_nvidia_modules():
        assert "torch_utils.persistence" in sys.modules
    assert "torch_utils.persistence" not in sys.modules


@pytest.mark.gpu
def test_cuda_matches_cpu(pickled, tmp_path: Path) -> None:
    _, net, path, _ = pickled
    gpu = load_generator(str(path), device="cuda", weights=WeightsStore(tmp_path, tmp_path / "lock.json"))
    z, c = inputs(net)
    ref = net(z, c, noise_mode="const", force_fp32=True)
    with autocast("fp32", torch.device("cuda")):  # what precision fp32 runs under: IEEE, not TF32
        out = gpu(z.cuda(), None if c is None else c.cuda(), noise_mode="const", force_fp32=True).cpu()
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=0)


def test_per_sample_input_transforms_equal_nvidias_shared_buffer() -> None:
    """Each sample's transform gives what setting NVIDIA's `input.transform` buffer to it gives."""
    from pipeline.generators.stylegan3 import make_transform

    net = randomised(StyleGAN3Generator, SG3_T)
    z, _ = inputs(net, n=2)
    ws = net.mapping(z, None)
    mats = [np.linalg.inv(make_transform((0.1, -0.05), 10.0)), np.linalg.inv(make_transform((-0.2, 0.0), -30.0))]
    batch = net.synthesis(ws, input_transforms=torch.tensor(np.stack(mats), dtype=torch.float32), force_fp32=True)
    for k, m in enumerate(mats):
        net.synthesis.input.transform.copy_(torch.from_numpy(m))
        single = net.synthesis(ws[k : k + 1], force_fp32=True)
        torch.testing.assert_close(batch[k : k + 1], single, atol=1e-5, rtol=1e-5)
    net.synthesis.input.transform.copy_(torch.eye(3))
    assert not torch.allclose(batch[0], net.synthesis(ws[:1], force_fp32=True)[0], atol=1e-3)  # it moved


def test_face_pass_reads_the_pickle_once_and_scores_realism(pickled, tmp_path: Path, monkeypatch) -> None:
    """Generation from a pickle: one read (and one sha256) gives G and D; q_disc is D's per-sample logit."""
    import pipeline.generators.checkpoint as checkpoint
    from pipeline.weights import WeightsStore

    from .conftest import columns_of, make_device_pass, small_params

    _, net, path, _ = pickled
    if net.c_dim:
        pytest.skip("the pipeline generates unconditionally")
    reads = []
    real = checkpoint.read_network_pickle
    monkeypatch.setattr(checkpoint, "read_network_pickle", lambda p: reads.append(p) or real(p))
    params = small_params(generator={"model": str(path), "resolution": None}, variation={"mix_start": 4})
    store = WeightsStore(tmp_path, tmp_path / "lock.json")
    assert make_device_pass(params, weights=store).models.discriminator is None  # off by default
    reads.clear()
    params = small_params(
        generator={"model": str(path), "resolution": None, "disc_score": True}, variation={"mix_start": 4}
    )
    device_pass = make_device_pass(params, weights=store)
    assert len(reads) == 1 and device_pass.models.discriminator is not None
    cols = columns_of(device_pass, np.array([0, 1]), np.array([0, 0]))
    assert np.isfinite(cols["q_disc"]).all()
    alone = columns_of(device_pass, np.array([1]), np.array([0]))["q_disc"]
    np.testing.assert_allclose(alone, cols["q_disc"][1:], atol=1e-5)  # independent of batch-mates


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_synthesis_runs_and_stays_close_to_fp32(precision: str) -> None:
    """bf16 autocast and the network's own fp16 layers (2 of 5 resolutions here) run on a CPU too; on a GPU the
    same code path runs (gpu tests). Images agree with fp32 to within reduced-precision rounding."""
    from pipeline.generators.synthesis import synthesize

    net = randomised(StyleGAN2Generator, SG2_FLAT_COND)
    z, c = inputs(net, n=2)
    ws = net.mapping(z, c)
    reference = synthesize(net, ws, "fp32", "const")
    reduced = synthesize(net, ws, precision, "const")
    assert reduced.dtype == torch.float32 and torch.isfinite(reduced).all()
    error = (reduced - reference).abs()
    assert 0 < error.max() < 0.15 and error.mean() < 0.02, (error.max(), error.mean())


def test_the_stage_runs_reduced_precision_only_on_cuda() -> None:
    from pipeline.config import RuntimeParams
    from pipeline.runtime.device import effective_precision

    for precision in ("fp32", "fp16", "bf16"):
        runtime = RuntimeParams(precision=precision)
        assert effective_precision(runtime, torch.device("cpu")) == "fp32"
        assert effective_precision(runtime, torch.device("cuda")) == precision
