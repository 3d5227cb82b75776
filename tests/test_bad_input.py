"""Every bad input is answered in one `error:` line naming the key or file, exit status 2, before any work:
params (through the gate stage and the generate stage, exactly as they run), weights files, the dataset tools.
Each case also stays within its time and memory bounds (30 s / 1 GB; weights: 5 s / 1 GB)."""

from __future__ import annotations

import io
import os
import pickle
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline.generators.checkpoint import CHECKPOINT_FORMAT
from pipeline.stage import stage_status

from .conftest import REPO
from .nvidia_format import write_network_pickle

GOLDEN_PICKLE = REPO / "tests" / "golden" / "stylegan2-random-32px.pkl"


def write_params(path: Path, text_or_overrides: str | dict[str, Any]) -> Path:
    text = text_or_overrides if isinstance(text_or_overrides, str) else yaml.safe_dump(text_or_overrides)
    path.write_text("preset: smoke\n" + text if isinstance(text_or_overrides, str) else text)
    return path


def status(stage: str, params: Path, tmp: Path, capsys: pytest.CaptureFixture) -> tuple[int, list[str], float, int]:
    """Run a stage's entry point exactly as `python -m stages.<stage>` does: exit status, stderr's error
    lines, seconds, and how much this process's peak memory grew (bytes)."""
    module = __import__(f"stages.{stage}", fromlist=["main", "parser"])
    argv = {"check": ["--out", str(tmp / "checked")],
            "generate": ["--out", str(tmp / "candidates"), "--calibration", str(tmp / "calibration"),
                         "--weights", str(tmp / "weights"), "--lock", str(tmp / "lock.json")]}[stage]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    capsys.readouterr()
    start = time.perf_counter()
    code = stage_status(module.main, module.parser(), ["--params", str(params), *argv])
    seconds = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("error:")], seconds, grown


def reference(tmp: Path, kind: str) -> Path:
    """Reference embeddings that must be refused (or, for `good`, accepted)."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5, 512)).astype(np.float32)
    path = tmp / f"reference-{kind}.parquet"
    if kind == "nan":
        emb[:, 7] = np.nan  # one NaN per row: each would match nobody, switching the check off
    elif kind == "zero":
        emb[2] = 0.0
    if kind == "empty":
        table = pa.table({"embedding": pa.array([], pa.list_(pa.float32()))})
    elif kind == "strings":
        table = pa.table({"embedding": ["a", "b"]})
    elif kind == "ragged":
        table = pa.table({"embedding": [list(emb[0]), list(emb[1][:100])]})
    else:
        table = pa.table({"embedding": [list(r) for r in emb]})
    pq.write_table(table, path)
    return path


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)

#: (case, params.yaml text after `preset: smoke`, the key or file the one error line must name)
PARAMS_CASES = [
    ("misspelt section", "datset: {identities: 60}\n", "datset: unknown key (did you mean 'dataset'?)"),
    ("bool as a number", "export: {image_quality: true}\n", "export.image_quality: must be a number, got true"),
    ("bool as a count", "identities: {count: true}\n", "identities.count: must be a number, got true"),
    ("a number as a string", "identities: {count: '5'}\n", "identities.count: must be a number, got '5'"),
    ("a trillion identities", "identities: {count: 1000000000000}\n", "identities.count: must be <= 999999999"),
    ("a billion images each", "identities: {images_per_identity: 1000000000}\n",
     "identities.images_per_identity: must be <= 999"),
    ("billion laughs", BILLION_LAUGHS, "more than 64 aliases"),
    ("20,000-deep nesting", "x: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested deeper than 32 levels"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "text", "expected"), PARAMS_CASES, ids=[c[0] for c in PARAMS_CASES])
@pytest.mark.parametrize("stage", ["check", "generate"])
def test_bad_params_are_one_line_before_any_work(case, text, expected, stage, tmp_path, capsys) -> None:
    code, errors, seconds, grown = status(stage, write_params(tmp_path / "params.yaml", text), tmp_path, capsys)
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "candidates").exists() and not (tmp_path / "checked").exists()
    assert seconds < 30 and grown < 1 << 30


FILE_CASES = [
    ("reference with NaN rows", "nan", "dedup.reference: ", "5 rows are not finite or are zero"),
    ("reference with a zero row", "zero", "dedup.reference: ", "1 rows are not finite or are zero (first: row 2)"),
    ("reference with no rows", "empty", "dedup.reference: ", "has no rows"),
    ("reference of strings", "strings", "dedup.reference: ", "`embedding` must be lists of 512 numbers"),
    ("reference with ragged rows", "ragged", "dedup.reference: ", "row 1 has 100"),
    ("reference that is not Parquet", "/etc/passwd", "dedup.reference: /etc/passwd", "is not a Parquet file"),
    ("reference that does not exist", "/nope.parquet", "dedup.reference: /nope.parquet", "not found"),
]


@pytest.mark.parametrize(("case", "kind", "key", "expected"), FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_files_params_name_are_checked_at_the_gate(case, kind, key, expected, tmp_path, capsys) -> None:
    path = kind if kind.startswith("/") else str(reference(tmp_path, kind))
    params = write_params(tmp_path / "params.yaml", {"preset": "smoke", "dedup": {"reference": path}})
    code, errors, seconds, grown = status("check", params, tmp_path, capsys)
    assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {key}") and expected in errors[0], errors
    assert seconds < 30 and grown < 1 << 30


def test_a_good_reference_passes_the_gate(tmp_path, capsys) -> None:
    params = write_params(
        tmp_path / "params.yaml", {"preset": "smoke", "dedup": {"reference": str(reference(tmp_path, "good"))}}
    )
    assert status("check", params, tmp_path, capsys)[:2] == (0, [])
    assert (tmp_path / "checked").read_bytes().startswith(b"params.yaml and everything it names passed")


def test_an_unwritable_output_url_and_a_shard_too_big_for_memory_are_refused(tmp_path, capsys) -> None:
    params = write_params(tmp_path / "params.yaml", {
        "preset": "smoke", "runtime": {"output_url": "file:///proc/cands"},
        "identities": {"count": 1_000_000, "shard_size": 1_000_000, "images_per_identity": 900, "oversample": 1.0},
        "generator": {"resolution": 1024},
    })  # fmt: skip
    code, errors, _, _ = status("check", params, tmp_path, capsys)
    assert code == 2 and len(errors) == 2, errors
    assert errors[0].startswith("error: identities.shard_size: a shard of 1,000,000 identities x 900 candidates")
    assert errors[1].startswith("error: runtime.output_url: cannot write to file:///proc/cands")


def evil_pickle(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return os.system, (f"touch {marker}",)

    path.write_bytes(pickle.dumps({"G_ema": Evil()}))


def network_with_kwargs(path: Path, kwargs: dict[str, Any]) -> None:
    from pipeline.generators.stylegan2 import StyleGAN2Generator

    from .test_stylegan import SG2, randomised

    write_network_pickle(path, randomised(StyleGAN2Generator, SG2), kwargs)


def shared_everywhere() -> list:
    """A structure of 10^20 leaves in a few hundred bytes: one list referenced ten times at every level."""
    level: list = [0] * 10
    for _ in range(20):
        level = [level] * 10
    return level


def weights_file(tmp: Path, kind: str) -> Path:
    path = tmp / f"{kind}.pkl"
    if kind == "html":
        path.write_bytes(b"<!doctype html><html><body>Sign in to continue</body></html>")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(GOLDEN_PICKLE.read_bytes()[:50_000])
    elif kind == "zip":
        path = tmp / "weights.pt"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "not weights")
    elif kind in ("family", "kwargs"):
        path = tmp / f"{kind}.pt"
        family, kwargs = ("biggan", {}) if kind == "family" else ("stylegan2", {"z_dim": 32, "bogus": 1})
        torch.save({"format": CHECKPOINT_FORMAT, "family": family, "init_kwargs": kwargs, "state_dict": {}}, path)
    elif kind == "reduce":
        evil_pickle(path, tmp / "pwned")
    elif kind == "shared":
        from .test_stylegan import SG2

        network_with_kwargs(path, {**SG2, "mapping_kwargs": {"num_layers": 2, "extra": shared_everywhere()}})
    elif kind == "z_dim":
        from .test_stylegan import SG2

        network_with_kwargs(path, {**SG2, "z_dim": 2**40})
    return path


WEIGHTS_CASES = [
    ("an HTML page", "html", "is an HTML/XML page, not weights"),
    ("an empty file", "empty", "is empty (truncated download?)"),
    ("a truncated pickle", "truncated", "not a readable network pickle"),
    ("a zip that is no checkpoint", "zip", "not a readable torch checkpoint"),
    ("a checkpoint of an unknown family", "family", "unknown network family 'biggan'"),
    ("a checkpoint with bad arguments", "kwargs", "stylegan2 checkpoint does not build"),
    ("a pickle whose __reduce__ runs os.system", "reduce", "refusing global 'posix.system'"),
    ("arguments shared 10^20 times", "shared", "constructor arguments are not plain data"),
    ("a 2^40-dimensional latent", "z_dim", "constructor argument z_dim=1099511627776 is out of range"),
]


@pytest.mark.parametrize(("case", "kind", "expected"), WEIGHTS_CASES, ids=[c[0] for c in WEIGHTS_CASES])
def test_bad_weights_are_refused_in_one_line(case, kind, expected, tmp_path, capsys) -> None:
    path = weights_file(tmp_path, kind)
    params = write_params(tmp_path / "params.yaml", {
        "preset": "smoke", "generator": {"model": str(path)}, "attributes": {"estimators": ["pose"]},
        "variation": {"edits": {"smoke_pitch": [], "smoke_smile": []}, "preserve": []},  # pose alone has neither
    })  # fmt: skip
    code, errors, seconds, grown = status("generate", params, tmp_path, capsys)
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not list((tmp_path / "candidates").glob("shard-*")) and not (tmp_path / "pwned").exists()
    assert seconds < 5 and grown < 1 << 30


def test_a_real_stage_process_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """The same edge as a process: `python -m stages.check` on a misspelt section."""
    params = write_params(tmp_path / "params.yaml", "datset: {identities: 60}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stages.check", "--params", str(params), "--out", str(tmp_path / "checked")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: datset: unknown key (did you mean 'dataset'?)"
    ]


def manifest_case(dataset: Path, tmp: Path, kind: str) -> Path:
    """A copy of an exported dataset whose manifest.json (or folder) is broken in one way."""
    import json
    import shutil

    copy = tmp / "dataset"
    shutil.copytree(dataset, copy)
    m = json.loads((copy / "manifest.json").read_text())
    if kind == "no files":
        del m["files"]
    elif kind == "no bytes":
        del m["files"][0]["bytes"]
    elif kind == "a list":
        m = [m]
    elif kind == "outside":
        m["files"][0]["path"] = "../../../../etc/hostname"
    elif kind == "a file":
        return copy / "manifest.json"
    (copy / "manifest.json").write_text(json.dumps(m))
    return copy


@pytest.mark.parametrize(("kind", "expected"), [
    ("no files", "not a synthfaces manifest"), ("no bytes", "files[0] needs a `path`, a sha256 and a size"),
    ("a list", "not a synthfaces manifest"), ("outside", "'../../../../etc/hostname' is outside the dataset folder"),
    ("a file", "is not a folder"),
])  # fmt: skip
def test_verify_refuses_a_malformed_manifest_in_one_line(exported_dataset, tmp_path, capsys, kind, expected) -> None:
    from pipeline.cli import main

    assert main(["verify", str(manifest_case(exported_dataset, tmp_path, kind))]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_verify_checks_counts_and_exempts_no_name_inside_format_folders(exported_dataset, tmp_path, capsys) -> None:
    import json

    from pipeline.cli import main

    copy = manifest_case(exported_dataset, tmp_path, "intact")
    folder = sorted(p for p in (copy / "imagefolder").iterdir() if p.is_dir())[0]
    (folder / "contact_sheet.jpg").write_bytes(b"\xff\xd8 not listed")
    m = json.loads((copy / "manifest.json").read_text())
    m["counts"]["samples"] += 1
    (copy / "manifest.json").write_text(json.dumps(m))
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"unlisted  imagefolder/{folder.name}/contact_sheet.jpg" in out
    assert "count     metadata.parquet: 6 samples, counts.samples says 7" in out
    assert "count     webdataset/*.tar: 6 samples, counts.samples says 7" in out


@pytest.mark.parametrize(("args", "expected"), [
    (["--rows", "-3"], "--rows: must be 1 to 1000 identities, got -3"),
    (["--out", "/proc/nope/sheet.jpg"], "--out: cannot write /proc/nope/sheet.jpg"),
])  # fmt: skip
def test_preview_checks_its_arguments(exported_dataset, tmp_path, capsys, args, expected) -> None:
    from pipeline.cli import main

    assert main(["preview", str(exported_dataset), *args]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "sheet.jpg").exists()


def test_unsafe_pickle_bytes_never_run(tmp_path: Path) -> None:
    """The __reduce__ case refused above wrote nothing: its os.system never ran (io.BytesIO: no file)."""
    from pipeline.generators.network_pickle import UnsafePickleError, read_network_pickle

    marker = tmp_path / "pwned"
    evil_pickle(tmp_path / "evil.pkl", marker)
    with pytest.raises(UnsafePickleError):
        read_network_pickle(io.BytesIO((tmp_path / "evil.pkl").read_bytes()))
    assert not marker.exists()
