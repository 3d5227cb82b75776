"""The pipelined generate stage: CPU encoder threads, micro-batched synthesis, automatic batch size,
and shard stores behind fsspec URLs."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.generate.device_pass import DevicePass
from pipeline.generate.driver import run_generate
from pipeline.generate.worker import compute_shard, plan_config
from pipeline.generators.stylegan2 import StyleGAN2Generator
from pipeline.generators.synthesis import synthesize
from pipeline.runtime.device import fit_batch, probe_batch_size, synthesis_batch
from pipeline.shards.candidates import ShardSpec, ShardStore
from pipeline.shards.encode import JPEG_ENCODERS, BoundedPool, resolve_jpeg_encoder
from pipeline.shards.io import sha256_file

from .conftest import columns_of, make_device_pass, small_params
from .test_stylegan import SG2, randomised


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=30), st.integers(1, 4), st.integers(1, 6))
def test_bounded_pool_keeps_order_and_its_window(items: list[int], workers: int, window: int) -> None:
    running, peak, lock = [0], [0], threading.Lock()
    submitted = []

    def square(x: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.0005)
        with lock:
            running[0] -= 1
        return x * x

    def produce():
        for x in items:
            submitted.append(x)
            yield x

    pool = BoundedPool(workers, window)
    seen = []
    for y in pool.map(square, produce()):
        seen.append(y)
        assert len(submitted) - len(seen) < window  # the producer never runs more than `window` ahead
    pool.close()
    assert seen == [x * x for x in items] and peak[0] <= min(workers, window)


def test_bounded_pool_raises_a_workers_error_in_order() -> None:
    def fail_on_three(x: int) -> int:
        if x == 3:
            raise ValueError("bad item 3")
        return x

    pool = BoundedPool(2)
    seen = []
    with pytest.raises(ValueError, match="bad item 3"):
        for y in pool.map(fail_on_three, range(6)):
            seen.append(y)
    pool.close()
    assert seen == [0, 1, 2]


def test_encoder_threads_do_not_change_a_single_byte(device_pass: DevicePass) -> None:
    """Encoding on 1 or 3 threads, overlapped with the device loop, equals encoding inline."""
    spec = ShardSpec(0, 0, 2)
    inline = columns_of(device_pass, np.repeat(np.arange(2), 4), np.tile(np.arange(4), 2))
    tables = []
    for workers in (1, 3):
        pool = BoundedPool(workers)
        tables.append(compute_shard(device_pass, spec, plan_config(small_params()), "x", pool, lambda n: None))
        pool.close()
    assert np.isnan(tables[0].column("q_disc").to_numpy()).all()  # the smoke generator has no discriminator
    assert tables[0].drop_columns(["q_disc"]).equals(tables[1].drop_columns(["q_disc"]))
    assert tables[0].column("image").to_pylist() == inline["image"]
    assert tables[0].column("aligned").to_pylist() == inline["aligned"]
    assert Image.open(io.BytesIO(inline["image"][0])).format == "JPEG"


def test_jpeg_encoder_choice() -> None:
    assert resolve_jpeg_encoder("auto", torch.device("cpu")) == "pillow"
    assert resolve_jpeg_encoder("auto", torch.device("cuda", 0)) == "nvjpeg"
    with pytest.raises(ConfigError, match=r"^runtime\.jpeg_encoder: nvjpeg needs a CUDA device"):
        JPEG_ENCODERS.create("nvjpeg", device=torch.device("cpu"))


def test_nvjpeg_on_a_cpu_run_is_refused_before_any_model_loads() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.jpeg_encoder"):
        make_device_pass(small_params(runtime={"jpeg_encoder": "nvjpeg"}))


def test_micro_batched_synthesis_matches_one_call() -> None:
    g = randomised(StyleGAN2Generator, SG2)
    ws = g.mapping(torch.randn(5, SG2["z_dim"]), None, truncation_psi=0.7)
    whole = synthesize(g, ws, "fp32", "const")
    assert torch.allclose(synthesize(g, ws, "fp32", "const", micro_batch=2), whole, atol=1e-5)
    assert synthesis_batch(small_params().runtime, torch.device("cpu"), g, 32) == 1  # memory-bound on a CPU
    assert synthesis_batch(small_params().runtime, torch.device("cuda"), g, 32) == 32


@pytest.mark.parametrize(
    ("fixed", "per", "free", "expected"),
    [(1e9, 1e8, 10e9, 64), (0, 1e6, 80e9, 512), (5e9, 1e9, 4e9, 1), (2e9, 3e8, 12e9, 16)],
)
def test_fit_batch_is_the_largest_power_of_two_in_the_headroom(fixed, per, free, expected) -> None:
    assert fit_batch(fixed, per, free) == expected


def test_probe_on_a_cpu_keeps_the_cpu_default() -> None:
    assert probe_batch_size(lambda n: pytest.fail("no probe on a CPU"), torch.device("cpu")) == 32


@pytest.mark.gpu
def test_probe_and_nvjpeg_on_cuda(tmp_path: Path) -> None:
    device = torch.device("cuda")
    chosen = probe_batch_size(lambda n: torch.empty(n, 64, 2**20, device=device), device)
    assert chosen >= 16
    pixels = torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8, device=device)
    pixels[:, :32] = 200  # some structure, so a lossy round trip stays close
    encoded = JPEG_ENCODERS.create("nvjpeg", device=device)(pixels)
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded])
    assert np.abs(decoded[:, :32].astype(int) - 200).mean() < 3


def digests(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.glob("shard-*"))}


def test_an_fsspec_store_gives_the_bytes_of_a_local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers write to `runtime.output_url`; finished shards land in the stage's folder byte for byte,
    and a rerun resumes from the store without computing anything."""
    params = small_params(identities={"count": 4, "shard_size": 2})
    run_generate(params, tmp_path / "local")
    url = f"memory://synthfaces-test-{time.monotonic_ns()}/candidates"
    remote = small_params(identities={"count": 4, "shard_size": 2}, runtime={"output_url": url})
    run_generate(remote, tmp_path / "fetched")
    assert digests(tmp_path / "fetched") == digests(tmp_path / "local")
    store = ShardStore(url)
    assert sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(store.root, detail=False)) == sorted(
        digests(tmp_path / "local")
    )
    (tmp_path / "fetched" / "shard-000001.parquet").unlink()  # lost locally: fetched again, not recomputed
    calls = []
    real = DevicePass.compute
    monkeypatch.setattr(DevicePass, "compute", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    run_generate(remote, tmp_path / "fetched")
    assert digests(tmp_path / "fetched") == digests(tmp_path / "local") and calls == []


def test_an_unknown_store_protocol_is_a_one_line_error() -> None:
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match=r"^runtime\.output_url: cannot open 'nosuchproto://x'"):
        ShardStore("nosuchproto://x")
