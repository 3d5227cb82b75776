"""Weights: downloads from a local HTTP server on 127.0.0.1 (never the network), resume with Range,
sha256 lock on first download, and a one-line refusal with what to do for every bad file."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.generators import load_generator
from pipeline.weights import (
    WEIGHTS,
    DownloadError,
    WeightsError,
    WeightsLock,
    WeightsStore,
    fetch,
    fetch_required,
    verify,
)

from .conftest import small_params

PAYLOAD = b"\x80\x04" + bytes(range(256)) * 400  # looks like a pickle; 100 KiB


class Server:
    """Serves files with HTTP Range; `mode` makes it misbehave: html, cut (drops the connection), 404."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "ok"
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Range")))
                name = self.path.lstrip("/")
                if outer.mode == "404" or name not in outer.files:
                    self.send_error(404, "Not Found")
                    return
                if outer.mode == "html":
                    body = b"<!DOCTYPE html><html><body>Please log in</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = outer.files[name]
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if outer.mode == "cut":
                    body = body[: len(body) // 3]
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.files["stylegan2-ffhq-256x256.pkl"] = PAYLOAD
    yield s
    s.close()


SPEC = WEIGHTS["stylegan2-ffhq-256x256"]


def test_download_locks_sha256(server: Server, tmp_path: Path) -> None:
    lock = WeightsLock(tmp_path / "lock.json")
    path = fetch(SPEC, tmp_path / "w", lock, url=f"{server.url}/{SPEC.file}")
    assert path.read_bytes() == PAYLOAD
    import hashlib

    assert WeightsLock(tmp_path / "lock.json").get(SPEC.file) == hashlib.sha256(PAYLOAD).hexdigest()
    assert list((tmp_path / "w").iterdir()) == [path]  # no partial file left
    fetch(SPEC, tmp_path / "w", lock, url=f"{server.url}/{SPEC.file}")
    assert len(server.requests) == 1  # present and verified: no second download


def test_partial_download_resumes_with_range(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w"
    dest.mkdir()
    (dest / f".{SPEC.file}.part").write_bytes(PAYLOAD[:30000])
    path = fetch(SPEC, dest, WeightsLock(tmp_path / "lock.json"), url=f"{server.url}/{SPEC.file}")
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [(f"/{SPEC.file}", "bytes=30000-")]


def test_cut_connection_is_reported_then_resumed(server: Server, tmp_path: Path) -> None:
    lock = WeightsLock(tmp_path / "lock.json")
    server.mode = "cut"
    with pytest.raises(WeightsError, match=r"stopped at \d+ of 102402 bytes; run again to resume"):
        fetch(SPEC, tmp_path / "w", lock, url=f"{server.url}/{SPEC.file}")
    assert not (tmp_path / "w" / SPEC.file).exists()
    server.mode = "ok"
    assert fetch(SPEC, tmp_path / "w", lock, url=f"{server.url}/{SPEC.file}").read_bytes() == PAYLOAD
    assert server.requests[-1][1] is not None  # the second request resumed


def test_wrong_sha256_is_refused_with_what_to_do(server: Server, tmp_path: Path) -> None:
    lock = WeightsLock(tmp_path / "lock.json")
    lock.record(SPEC.file, "0" * 64)
    with pytest.raises(WeightsError, match=r"does not match .* Delete it and fetch again"):
        fetch(SPEC, tmp_path / "w", lock, url=f"{server.url}/{SPEC.file}")


def test_html_page_is_refused(server: Server, tmp_path: Path) -> None:
    server.mode = "html"
    with pytest.raises(WeightsError, match="HTML page"):
        fetch(SPEC, tmp_path / "w", WeightsLock(tmp_path / "lock.json"), url=f"{server.url}/{SPEC.file}")
    assert not (tmp_path / "w" / SPEC.file).exists()


def test_http_error_is_one_clear_line(server: Server, tmp_path: Path) -> None:
    server.mode = "404"
    with pytest.raises(DownloadError, match=r"failed: HTTP 404"):
        fetch(SPEC, tmp_path / "w", WeightsLock(tmp_path / "lock.json"), url=f"{server.url}/{SPEC.file}")


def test_unreachable_server_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"check the network, or place .* by hand"):
        fetch(SPEC, tmp_path / "w", WeightsLock(tmp_path / "lock.json"), url="http://127.0.0.1:9/none.pkl", timeout=5)


def test_tampered_file_refused_on_later_use(server: Server, tmp_path: Path) -> None:
    lock = WeightsLock(tmp_path / "lock.json")
    path = fetch(SPEC, tmp_path / "w", lock, url=f"{server.url}/{SPEC.file}")
    path.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(WeightsError, match="does not match"):
        verify(path, WeightsLock(tmp_path / "lock.json"))


def test_required_weights_follow_the_params(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    lock = WeightsLock(tmp_path / "lock.json")
    judge = sorted(WEIGHTS[k].file for k in ("dlib-resnet-v1", "dlib-shape-5"))  # shipped by face_recognition_models
    assert sorted(fetch_required(small_params(), tmp_path / "w", lock)) == judge  # smoke: nothing to download
    assert sorted(fetch_required(small_params(judge={"model": None}), tmp_path / "w", lock)) == []
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())
    server.files["20180402-114759-vggface2.pt"] = b"PK\x03\x04" + b"\x00" * 100
    params = small_params(
        generator={"model": "stylegan2-ffhq-256x256", "resolution": None}, embed={"allow_random": False}
    )
    fetched = fetch_required(params, tmp_path / "w", lock, base_url=server.url)
    assert sorted(fetched) == sorted(["20180402-114759-vggface2.pt", SPEC.file, *judge])


def test_missing_generator_weights_name_the_file_url_and_smoke(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        load_generator("stylegan2-ffhq-256x256", weights=WeightsStore(tmp_path, tmp_path / "lock.json"))
    message = str(info.value)
    assert SPEC.file in message and SPEC.url in message and "preset=smoke" in message


def test_loading_never_writes_the_lock_only_the_weights_stage_does(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock_path = tmp_path / "lock.json"
    lock_path.write_text("{}")
    local = tmp_path / "mine.pkl"
    local.write_bytes(PAYLOAD)
    with caplog.at_level("WARNING", logger="pipeline.weights"):
        digest = verify(local, WeightsLock(lock_path))  # a load: unverified, said so, nothing written
    assert lock_path.read_text() == "{}" and "has no entry in" in caplog.text and digest[:16] in caplog.text
    fetch(SPEC, tmp_path / "w", WeightsLock(lock_path), url=f"{server.url}/{SPEC.file}")  # the weights stage
    assert WeightsLock(lock_path).get(SPEC.file) == hashlib.sha256(PAYLOAD).hexdigest()


def test_default_preset_offline_says_how_to_build_without_a_download(tmp_path: Path) -> None:
    """What a new user sees on `uv run dvc repro` without network: the file, the URL, and the way out."""
    from .conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-m", "stages.weights", "--params", str(REPO / "params.yaml"), "--out", str(tmp_path / "w"),
         "--lock", str(tmp_path / "lock.json"), "--base-url", "http://127.0.0.1:9"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: download of stylegan2-ffhq-256x256 from http://127.0.0.1:9/stylegan2-ffhq-256x256")
    assert "uv run dvc exp run -S preset=smoke" in last and not (tmp_path / "lock.json").exists()


def test_judge_weights_offline_point_to_its_extra_not_the_smoke_preset(tmp_path: Path) -> None:
    """The smoke preset needs the judge's files too: their way out is the judge extra or judge.model: none."""
    spec = WEIGHTS["dlib-resnet-v1"]
    with pytest.raises(DownloadError) as info:
        fetch(spec, tmp_path / "w", WeightsLock(tmp_path / "lock.json"), url="http://127.0.0.1:9/x.dat", timeout=5)
    assert "uv sync --extra judge" in str(info.value) and "judge.model: none" in str(info.value)
    assert "preset=smoke" not in str(info.value)
