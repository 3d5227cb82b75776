"""Known weights (name, file, URL, licence) and their fetching: resumable download to a temporary name,
sha256 locked on first download and verified on every later use."""

from __future__ import annotations

import http.client
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Params as PipelineParams
from pipeline.errors import InputError, PipelineError
from pipeline.runtime.progress import progress
from pipeline.shards.io import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

NGC = "https://api.ngc.nvidia.com/v2/models/nvidia/research"
FACENET_RELEASE = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9"
NVIDIA_LICENSE = (
    "NVIDIA Source Code License for StyleGAN2/StyleGAN3 (non-commercial: research and evaluation only); "
    "https://nvlabs.github.io/stylegan3/license.html"
)
OPENCLIP_LICENSE = "MIT (OpenCLIP); ViT-B-32 weights trained by LAION on LAION-2B (laion2b_s34b_b79k)"
FACENET_LICENSE = "MIT (facenet-pytorch; weights trained by David Sandberg's facenet on VGGFace2 / CASIA-WebFace)"
DLIB_LICENSE = "CC0 1.0 (dlib's face models by Davis King, shipped in face_recognition_models)"
FACE_RECOGNITION_MODELS = (
    "https://github.com/ageitgey/face_recognition_models/raw/master/face_recognition_models/models"
)
DEFAULT_LOCK = "weights.lock.json"
#: The way out of every "weights missing" error: the smoke preset needs no download.
OFFLINE_HINT = "To build offline without these weights, use the smoke preset: uv run dvc exp run -S preset=smoke"
#: The judge's files come with its extra, in every preset; the judge can also be switched off.
JUDGE_HINT = "The judge extra ships this file (uv sync --extra judge), or switch the judge off: judge.model: none"
CHUNK = 1 << 20


def _way_out(spec: WeightsSpec) -> str:
    return JUDGE_HINT if spec.kind == "judge" else OFFLINE_HINT


@dataclass(frozen=True)
class WeightsSpec:
    name: str
    file: str
    url: str
    license: str
    kind: str  # "generator", "embedder", "attributes" or "judge"


def _stylegan(name: str, version: str) -> WeightsSpec:
    return WeightsSpec(name, f"{name}.pkl", f"{NGC}/{version}/versions/1/files/{name}.pkl", NVIDIA_LICENSE, "generator")


WEIGHTS: dict[str, WeightsSpec] = {
    spec.name: spec
    for spec in [
        *(
            _stylegan(f"stylegan2-{n}", "stylegan2")
            for n in ("ffhq-256x256", "ffhq-512x512", "ffhq-1024x1024", "ffhqu-256x256")
        ),
        *(
            _stylegan(f"stylegan3-{n}", "stylegan3")
            for n in ("t-ffhq-1024x1024", "t-ffhqu-256x256", "r-ffhq-1024x1024", "r-ffhqu-256x256")
        ),
        WeightsSpec(
            "facenet-vggface2",
            "20180402-114759-vggface2.pt",
            f"{FACENET_RELEASE}/20180402-114759-vggface2.pt",
            FACENET_LICENSE,
            "embedder",
        ),
        WeightsSpec(
            "facenet-casia-webface",
            "20180408-102900-casia-webface.pt",
            f"{FACENET_RELEASE}/20180408-102900-casia-webface.pt",
            FACENET_LICENSE,
            "embedder",
        ),
        *(
            WeightsSpec(name, file, f"{FACE_RECOGNITION_MODELS}/{file}", DLIB_LICENSE, "judge")
            for name, file in (
                ("dlib-resnet-v1", "dlib_face_recognition_resnet_model_v1.dat"),
                ("dlib-shape-5", "shape_predictor_5_face_landmarks.dat"),
            )
        ),
        WeightsSpec(
            "openclip-vit-b-32-laion2b",
            "open_clip_vit_b_32_laion2b_s34b_b79k.safetensors",
            "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_model.safetensors",
            OPENCLIP_LICENSE,
            "attributes",
        ),
    ]
}
EMBEDDER_WEIGHTS = {"vggface2": "facenet-vggface2", "casia-webface": "facenet-casia-webface"}


def find_embedder_checkpoint(weights: str, weights_dir: Path | None) -> Path | None:
    """`weights_dir/<file>`, else `$TORCH_HOME/checkpoints/<file>` (facenet-pytorch's cache), else None."""
    name = WEIGHTS[EMBEDDER_WEIGHTS[weights]].file
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    for folder in (weights_dir, torch_home / "checkpoints"):
        if folder is not None and (folder / name).is_file():
            return folder / name
    return None


def find_judge_file(file: str, weights_dir: Path | None) -> Path | None:
    """`weights_dir/<file>`, else the copy the face_recognition_models package ships, else None."""
    if weights_dir is not None and (weights_dir / file).is_file():
        return weights_dir / file
    try:
        import importlib.util

        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    shipped = Path(spec.origin).parent / "models" / file
    return shipped if shipped.is_file() else None


class WeightsError(InputError):
    """A weights file is missing, incomplete, or not what the lock says; the message says what to do."""


class DownloadError(PipelineError):
    """A download failed (network, server): a failed run, not bad input; the message says the way out."""


class WeightsLock:
    """`weights.lock.json`: file name -> sha256, written on first download, checked on every use."""

    def __init__(self, path: str | Path = DEFAULT_LOCK):
        self.path = Path(path)
        self.entries: dict[str, str] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get(self, file: str) -> str | None:
        return self.entries.get(file)

    def record(self, file: str, sha256: str) -> None:
        self.entries[file] = sha256
        write_json_atomic(self.path, self.entries)


@dataclass(frozen=True)
class WeightsStore:
    """The weights folder and the lock that vouches for its files: the one thing every loader is given."""

    folder: Path = Path("weights")
    lock_path: Path = Path(DEFAULT_LOCK)

    def path(self, spec: WeightsSpec) -> Path:
        return self.folder / spec.file

    def verify(self, path: Path) -> str:
        """sha256 of `path`, refused unless the lock agrees (a file it does not know loads with a warning)."""
        return verify(path, WeightsLock(self.lock_path))

    def embedder_checkpoint(self, weights: str) -> Path | None:
        return find_embedder_checkpoint(weights, self.folder)

    def judge_file(self, file: str) -> Path | None:
        return find_judge_file(file, self.folder)


def verify(path: Path, lock: WeightsLock, record: bool = False) -> str:
    """sha256 of `path`, refused unless it equals the locked one. A file with no lock entry is locked when
    `record` (only the weights stage records), else loaded with a warning: loading never writes the lock."""
    if not path.is_file():
        raise WeightsError(f"{path} not found: run `uv run dvc repro weights` (or the weights stage) to fetch it")
    digest = sha256_file(path)
    expected = lock.get(path.name)
    if expected is None and record:
        lock.record(path.name, digest)
        log.info("locked %s sha256 %s in %s", path.name, digest, lock.path)
    elif expected is None:
        log.warning(
            "%s (sha256 %s) has no entry in %s, so it is not verified; the weights stage locks the files it fetches",
            path,
            digest[:16],
            lock.path,
        )
    elif digest != expected:
        raise WeightsError(
            f"{path}: sha256 {digest[:16]}… does not match {expected[:16]}… in {lock.path}: the file is corrupt or "
            "was replaced. Delete it and fetch again; if the upstream file really changed, "
            f"remove its line from {lock.path}"
        )
    return digest


def fetch(
    spec: WeightsSpec, dest_dir: str | Path, lock: WeightsLock, url: str | None = None, timeout: float = 60
) -> Path:
    """Download `spec` into dest_dir (resuming a partial `.part` with HTTP Range), then verify it."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / spec.file
    if final.is_file():
        verify(final, lock, record=True)
        return final
    url = url or spec.url
    part = dest_dir / f".{spec.file}.part"
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range past the end: the partial file is already complete
            response = None
        else:
            raise DownloadError(
                f"download of {spec.name} from {url} failed: HTTP {err.code} {err.reason}. {_way_out(spec)}"
            ) from None
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(
            f"download of {spec.name} from {url} failed ({getattr(err, 'reason', err)}); check the network, or place "
            f"{spec.file} in {dest_dir}/ by hand and run the weights stage again (it locks its sha256). "
            f"{_way_out(spec)}"
        ) from None
    if response is not None:
        with response:
            if "text/html" in (response.headers.get("Content-Type") or ""):
                raise WeightsError(f"{url} returned an HTML page, not {spec.file}: the URL is wrong or needs a login")
            resumed = response.status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            bar = progress(total or 0, f"fetch {spec.file}", unit="B")
            bar.update(have)
            with bar, open(part, "ab" if resumed else "wb") as fh:
                try:
                    while block := response.read(CHUNK):
                        fh.write(block)
                        bar.update(len(block))
                except (http.client.IncompleteRead, ConnectionError, TimeoutError) as err:
                    log.warning("download of %s interrupted: %s", spec.file, err)
                fh.flush()
                os.fsync(fh.fileno())
        size = part.stat().st_size
        if total is not None and size < total:
            raise WeightsError(f"download of {spec.file} stopped at {size} of {total} bytes; run again to resume")
    _check_payload(part, spec)
    os.replace(part, final)
    verify(final, lock, record=True)
    return final


def _check_payload(path: Path, spec: WeightsSpec) -> None:
    from pipeline.generators.checkpoint import HTML_MARKERS

    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.lstrip().lower().startswith(HTML_MARKERS):
        path.unlink()
        raise WeightsError(f"{spec.file}: the server sent an HTML page instead of weights; check the URL ({spec.url})")
    if not head:
        path.unlink()
        raise WeightsError(f"{spec.file}: the server sent an empty file; run again")


def required_weights(params: PipelineParams) -> list[tuple[WeightsSpec, bool]]:
    """(spec, optional) for every file the resolved params need: the generator's, the embedder's, CLIP's,
    the judge's."""
    needed = []
    generator = WEIGHTS.get(params.generator.model)
    if generator is not None and generator.kind == "generator":
        needed.append((generator, False))
    needed.append((WEIGHTS[EMBEDDER_WEIGHTS[params.embed.weights]], params.embed.allow_random))
    a = params.attributes
    if "clip" in a.estimators:
        needed.append((WEIGHTS[a.clip_weights], a.clip_allow_random))
    if params.judge.model == "dlib_resnet":
        needed += [(WEIGHTS["dlib-resnet-v1"], False), (WEIGHTS["dlib-shape-5"], False)]
    return needed


def fetch_required(
    params: PipelineParams, dest_dir: Path, lock: WeightsLock, base_url: str | None = None
) -> dict[str, str]:
    """Fetch (or verify) every required file; optional ones are skipped when absent. Returns file -> sha256."""
    fetched: dict[str, str] = {}
    for spec, optional in required_weights(params):
        present = dest_dir / spec.file
        if spec.kind == "attributes" and optional and not present.is_file():
            log.warning("weights: %s not present and attributes.clip_allow_random is set: CLIP is random", spec.file)
            continue
        if spec.kind == "judge" and not present.is_file() and (shipped := find_judge_file(spec.file, None)):
            fetched[spec.file] = verify(shipped, lock, record=True)
            continue
        if spec.kind == "embedder" and not present.is_file():
            cached = find_embedder_checkpoint(params.embed.weights, None)
            if cached is not None:
                fetched[spec.file] = verify(cached, lock, record=True)
                continue
            if optional:
                log.warning(
                    "weights: %s not present and embed.allow_random is set: the embedder will use random weights",
                    spec.file,
                )
                continue
        url = f"{base_url.rstrip('/')}/{spec.file}" if base_url else None
        fetched[spec.file] = verify(fetch(spec, dest_dir, lock, url=url), lock, record=True)
    return fetched
