"""Checks of everything params.yaml refers to, before any work: the gate the `check` stage runs.

The schema and the plug-in names are checked by `load_checked_params`; this adds what needs the machine or
a file: the reference embeddings (shape, dtype, finite, non-zero rows), a generator file's kind, that every
output location can be written, and that a shard fits in memory while it is computed.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from pipeline.config import Params
from pipeline.errors import ConfigError, InputError

#: Bytes a candidate holds in memory while its shard is built, besides its JPEG frame: the PNG crop
#: (112 px), the 512-d embedding, boxes, landmarks and scores.
CANDIDATE_OVERHEAD = 40_000
#: Share of physical memory one shard may take while it is computed and written.
SHARD_MEMORY_SHARE = 0.5


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def shard_bytes(params: Params) -> int:
    """Estimated bytes of one shard's table in memory: its candidates' JPEG frames (about a quarter of their
    raw size at quality 95) and the rest of each row."""
    named = re.search(r"(\d+)x\1", params.generator.model)
    resolution = params.generator.resolution or (int(named.group(1)) if named else 1024)  # 1024: the largest
    per_candidate = resolution * resolution * 3 // 4 + CANDIDATE_OVERHEAD
    return params.identities.shard_size * params.identities.variants_per_identity * per_candidate


def check_inputs(params: Params, memory: int | None = None) -> None:
    """ConfigError with one line per problem, each naming its key path, or nothing."""
    problems = []
    for check in (_reference, _generator_file, _output_url):
        try:
            check(params)
        except InputError as err:
            problems.append(str(err))
    memory = memory or physical_memory()
    need = shard_bytes(params)
    if need > SHARD_MEMORY_SHARE * memory:
        i = params.identities
        problems.append(
            f"identities.shard_size: a shard of {i.shard_size:,} identities x {i.variants_per_identity} candidates "
            f"holds about {need / 2**30:.1f} GiB while it is built, more than half of this machine's "
            f"{memory / 2**30:.1f} GiB; lower identities.shard_size"
        )
    if problems:
        raise ConfigError(sorted(problems))


def _reference(params: Params) -> None:
    if params.dedup.reference:
        from pipeline.curation.dedup import load_reference

        load_reference(params.dedup.reference)


def _generator_file(params: Params) -> None:
    """A generator given as a file: it exists and looks like weights (not empty, not an HTML page)."""
    from pipeline.generators import GENERATORS
    from pipeline.weights import WEIGHTS

    model = params.generator.model
    if model in GENERATORS or model in WEIGHTS:
        return  # built in, or fetched by the weights stage
    from pipeline.generators.checkpoint import sniff
    from pipeline.generators.network_pickle import NetworkPickleError

    path = Path(model)
    if not path.is_file():
        raise InputError(f"generator.model: {path} not found (a weights name, smoke, or a .pkl/.pt file)")
    try:
        sniff(path)
    except NetworkPickleError as err:
        raise InputError(f"generator.model: {err}") from None


def _output_url(params: Params) -> None:
    """runtime.output_url can be written: a probe file is created there and removed."""
    url = params.runtime.output_url
    if not url:
        return
    from pipeline.shards.candidates import ShardStore

    try:
        store = ShardStore(url)
        probe = store.path(f".synthfaces-write-probe-{uuid.uuid4().hex[:8]}")
        store.fs.makedirs(store.root, exist_ok=True)
        store.fs.pipe_file(probe, b"probe")
        store.fs.rm_file(probe)
    except Exception as err:  # any filesystem's refusal, reported in its words
        raise InputError(f"runtime.output_url: cannot write to {url} ({type(err).__name__}: {err})") from None
