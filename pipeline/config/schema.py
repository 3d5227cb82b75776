"""The params schema: one model per params.yaml section, types, ranges and rules across sections."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


def Count(high: int) -> Any:
    """A positive integer with an upper bound that keeps plans and allocations sane."""
    return Annotated[int, Field(gt=0, le=high)]


#: Sample keys give the identity 9 digits and the variant 3 (DESIGN §7).
MAX_IDENTITIES, MAX_VARIANTS = 999_999_999, 999
#: The shard plan, the candidate manifest and the capacity curve hold one entry per shard.
MAX_SHARDS = 1_000_000
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Cosine = Annotated[float, Field(ge=-1.0, le=1.0)]


def _no_repeats(value: list[Any]) -> list[Any]:
    if len(set(value)) != len(value):
        raise ValueError(f"must not repeat a value, got {value}")
    return value


NoRepeats = AfterValidator(_no_repeats)


class Section(BaseModel):
    """A params section: YAML lists taken as tuples where a key wants one, unknown keys rejected, immutable, and no
    value silently turned into another kind (`true` is not 1, "5" is not 5)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is not None and (problem := coercion(value, cls.model_fields[info.field_name].annotation)):
            raise ValueError(problem)
        return value


def coercion(value: Any, annotation: Any) -> str | None:
    """Why taking `value` for `annotation` would change what the user wrote (pydantic's lax mode turns true
    into 1 and "5" into 5), or None. Containers are checked element by element."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return coercion(value, args[0])
    if origin in (Union, UnionType):
        problems = [coercion(value, a) for a in args]
        return None if any(p is None for p in problems) else next(p for p in problems if p)
    if origin is Literal:
        if any(type(value) is type(v) and value == v for v in args):
            return None
        return f"must be one of {', '.join(_shown(v) for v in args)}, got {_shown(value)}"
    if origin in (list, tuple) and isinstance(value, list | tuple):
        kinds = args if origin is tuple and Ellipsis not in args else args[:1] * len(value)
        return next((p for v, a in zip(value, kinds, strict=False) if (p := coercion(v, a))), None)
    if origin is dict and isinstance(value, dict):
        return next((p for v in value.values() if (p := coercion(v, args[1]))), None)
    if annotation is bool and not isinstance(value, bool):
        return f"must be true or false, got {_shown(value)}"
    if annotation in (int, float) and isinstance(value, bool | str):
        return f"must be a number, got {_shown(value)}"
    return None


def _shown(value: Any) -> str:
    """A value as params.yaml spells it (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


class GeneratorParams(Section):
    model: str = "smoke"
    truncation_psi: Annotated[float, Field(gt=0.0, le=2.0)] = 0.7
    truncation_cutoff: Count(64) | None = None
    noise_mode: Literal["const", "none", "random"] = "const"
    resolution: Annotated[int, Field(ge=64, le=1024)] | None = None
    disc_score: bool = False


class IdentitiesParams(Section):
    count: Count(MAX_IDENTITIES) = 1000
    images_per_identity: Count(MAX_VARIANTS) = 8
    oversample: Annotated[float, Field(ge=1.0, le=10.0)] = 1.5
    shard_size: Count(MAX_SHARDS) = 256
    separation: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    separation_tries: Annotated[int, Field(ge=1, le=64)] = 8

    @property
    def variants_per_identity(self) -> int:
        """Candidates generated per identity: the requested images plus the oversampling margin."""
        return int(-(-self.images_per_identity * self.oversample // 1))


class VariationParams(Section):
    mix: bool = True
    mix_start: Annotated[int, Field(ge=0, le=64)] = 8
    mix_stop: Count(64) | None = None
    latent_jitter: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    translate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    rotate: Annotated[float, Field(ge=0.0, le=180.0)] = 0.0
    edits: dict[str, tuple[float, float]] = {}
    edit_start: Annotated[int, Field(ge=0, le=64)] = 0
    edit_stop: Count(64) | None = None
    min_identity_cosine: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.5
    edit_steps: Annotated[int, Field(ge=1, le=16)] = 4
    preserve: list[str] = []

    @field_validator("edits", mode="before")
    @classmethod
    def _edits_switched_off(cls, value: Any) -> Any:
        """An empty range ([] or false) removes an edit a preset sets (null would keep the preset's)."""
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if v not in ([], (), False)}
        return value

    @field_validator("edits")
    @classmethod
    def _edit_ranges(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (low, high) in value.items():
            if not low <= high:
                raise ValueError(f"{name}: range must be [low, high] with low <= high, got [{low}, {high}]")
        return value

    def edit_layers(self, num_ws: int) -> tuple[int, int]:
        """[start, stop) of the ws layers an edit moves: up to the first style-mixed layer unless set."""
        stop = self.edit_stop or (self.mix_start if self.mix else num_ws)
        return self.edit_start, min(stop, num_ws)

    @field_validator("mix_stop")
    @classmethod
    def _mix_range(cls, value: int | None, info: ValidationInfo) -> int | None:
        start = info.data.get("mix_start")
        if value is not None and start is not None and value <= start:
            raise ValueError(f"must be > variation.mix_start ({start}), got {value}")
        return value


class DetectParams(Section):
    model: str = "mtcnn"
    min_face_size: Count(4096) | None = None
    thresholds: tuple[Probability, Probability, Probability] = (0.6, 0.7, 0.7)
    factor: Annotated[float, Field(gt=0.1, lt=1.0)] = 0.709
    count_min_prob: Probability = 0.9


class AlignParams(Section):
    size: Annotated[int, Field(ge=32, le=512)] = 112
    margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


class EmbedParams(Section):
    model: str = "inception_resnet_v1"
    weights: Literal["vggface2", "casia-webface"] = "vggface2"
    input_size: Annotated[int, Field(ge=80, le=320)] = 160
    allow_random: bool = False
    serfiq_passes: Annotated[int, Field(ge=0, le=1000)] = 100


ScorerName = Literal["catchlights", "droplets", "background", "accessories"]
#: In their columns' order (faces/columns.py; tested): the same scorers listed in any order give one fingerprint.
SCORERS = get_args(ScorerName)


class ArtifactsParams(Section):
    """Artifact scorers (pipeline/faces/artifacts.py) and, on the smoke renderer, planted artifacts to test them."""

    scorers: Annotated[list[ScorerName], NoRepeats, AfterValidator(lambda v: sorted(v, key=SCORERS.index))] = []
    plant: Probability = 0.0


#: The filter key of each artifact rule and the scorer whose column it thresholds (faces/columns.py names them).
ARTIFACT_RULES = {
    "max_catchlight_mismatch": "catchlights", "max_droplet": "droplets", "max_background_structure": "background",
    "max_accessory_asymmetry": "accessories",
}  # fmt: skip


class FilterParams(Section):
    min_det_prob: Probability = 0.98
    max_faces: Count(1000) = 1
    min_face_fraction: Probability = 0.05
    max_roll_deg: Annotated[float, Field(ge=0.0, le=180.0)] = 30.0
    max_align_residual: Annotated[float, Field(gt=0.0, le=100.0)] = 0.2
    min_sharpness: Annotated[float, Field(ge=0.0)] = 0.0
    brightness: tuple[Probability, Probability] = (0.15, 0.9)
    max_clipped: Probability = 0.25
    min_serfiq: Probability = 0.0
    min_disc_logit: float | None = None
    max_catchlight_mismatch: Annotated[float, Field(ge=0.0)] | None = None
    max_droplet: Annotated[float, Field(ge=0.0)] | None = None
    max_background_structure: Annotated[float, Field(ge=0.0)] | None = None
    max_accessory_asymmetry: Annotated[float, Field(ge=0.0)] | None = None

    @field_validator("brightness")
    @classmethod
    def _brightness_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError(f"must be [low, high] with low < high, got {list(value)}")
        return value


class DedupParams(Section):
    max_identity_similarity: Cosine = 0.5
    min_sample_consistency: Cosine = 0.4
    max_sample_similarity: Cosine = 0.98
    reference: str | None = None
    max_reference_similarity: Cosine = 0.3
    exact_search_max: Count(MAX_IDENTITIES) = 1_000_000
    min_recall: Annotated[float, Field(gt=0.0, le=1.0)] = 0.99
    ivf_nlist: Count(1_000_000) | None = None
    ivf_nprobe: Count(1_000_000) = 8


class AttributesParams(Section):
    estimators: Annotated[list[str], NoRepeats] = ["pose"]
    yaw_bins: dict[str, tuple[float, float]] = {"left": (-90.0, -15.0), "frontal": (-15.0, 15.0), "right": (15.0, 90.0)}
    nose_depth: Annotated[float, Field(gt=0.0, le=3.0)] = 0.8
    clip_weights: Literal["openclip-vit-b-32-laion2b"] = "openclip-vit-b-32-laion2b"
    clip_attributes: list[str] = ["gender", "age", "ethnicity", "glasses", "smile", "facial_hair", "headwear"]
    clip_allow_random: bool = False

    @field_validator("yaw_bins")
    @classmethod
    def _ordered_bins(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        spans = sorted(value.values())
        if any(lo >= hi for lo, hi in spans):
            raise ValueError(f"each bin must be [low, high) with low < high, got {value}")
        if any(a[1] > b[0] for a, b in itertools.pairwise(spans)):
            raise ValueError(f"bins must not overlap, got {value}")
        return value


class CalibrateParams(Section):
    attributes: list[str] | None = None
    samples: Annotated[int, Field(ge=20, le=1_000_000)] = 2000
    holdout: Annotated[float, Field(gt=0.0, lt=0.9)] = 0.25
    regularization: Annotated[float, Field(ge=0.0)] = 1e-3


class BalanceParams(Section):
    mode: Literal["select", "steer"] = "select"
    targets: dict[str, dict[str, Probability]] = {}
    tolerance: Probability = 0.02
    steer_margin: Annotated[float, Field(ge=0.0)] = 0.5
    steer_chunk: Count(100_000) = 16
    time_limit: Annotated[float, Field(gt=0.0, le=604_800.0)] = 120.0


class DatasetParams(Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")] = "synthfaces"
    identities: Count(MAX_IDENTITIES) = 500
    images_per_identity: Count(MAX_VARIANTS) = 6


class ExportParams(Section):
    formats: Annotated[
        list[Literal["webdataset", "parquet", "recordio", "imagefolder", "lmdb"]], Field(min_length=1), NoRepeats
    ] = ["webdataset", "parquet"]
    samples_per_shard: Count(100_000_000) = 10_000
    max_shard_bytes: Annotated[int, Field(ge=1 << 20, le=1 << 40)] = 1 << 30
    image_format: Literal["jpg", "png", "webp"] = "jpg"
    image_quality: Annotated[int, Field(ge=1, le=100)] = 95
    include_full: bool = False
    shuffle: bool = True
    workers: Count(1024) | Literal["auto"] = "auto"


class RuntimeParams(Section):
    executor: str = "local"
    devices: Annotated[list[str], Field(min_length=1)] = ["auto"]
    batch_size: Count(65_536) | Literal["auto"] = "auto"
    synthesis_batch: Count(65_536) | Literal["auto"] = "auto"
    precision: Literal["fp32", "fp16", "bf16"] = "bf16"
    jpeg_encoder: Literal["auto", "pillow", "nvjpeg"] = "auto"
    encode_workers: Count(256) | Literal["auto"] = "auto"
    threads: Count(4096) | None = None
    compile: bool = False
    ray_address: str | None = None
    output_url: str | None = None
    gpus_per_task: Annotated[float, Field(ge=0.0, le=1024.0)] = 0.0
    cpus_per_task: Annotated[float, Field(gt=0.0, le=4096.0)] = 1.0


class JudgeParams(Section):
    model: str | None = "dlib_resnet"
    identities: Count(100_000) = 50

    @field_validator("model", mode="before")
    @classmethod
    def _switched_off(cls, value: Any) -> Any:
        """`none` switches the judge off (a null in params.yaml means "the preset's value")."""
        return None if value == "none" else value


class Params(Section):
    """The whole params.yaml, merged over its preset."""

    preset: str = "smoke"
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    generator: GeneratorParams = GeneratorParams()
    identities: IdentitiesParams = IdentitiesParams()
    variation: VariationParams = VariationParams()
    detect: DetectParams = DetectParams()
    align: AlignParams = AlignParams()
    embed: EmbedParams = EmbedParams()
    artifacts: ArtifactsParams = ArtifactsParams()
    attributes: AttributesParams = AttributesParams()
    calibrate: CalibrateParams = CalibrateParams()
    filter: FilterParams = FilterParams()
    dedup: DedupParams = DedupParams()
    balance: BalanceParams = BalanceParams()
    dataset: DatasetParams = DatasetParams()
    export: ExportParams = ExportParams()
    judge: JudgeParams = JudgeParams()
    runtime: RuntimeParams = RuntimeParams()

    @model_validator(mode="after")
    def _dataset_fits_candidates(self) -> Params:
        i = self.identities
        if i.variants_per_identity > MAX_VARIANTS:
            raise _CrossFieldError(
                "identities.images_per_identity",
                f"x identities.oversample must be <= {MAX_VARIANTS} candidates per identity (sample keys give the "
                f"variant 3 digits), got {i.variants_per_identity}",
            )
        if -(-i.count // i.shard_size) > MAX_SHARDS:
            raise _CrossFieldError(
                "identities.shard_size",
                f"must be >= {-(-i.count // MAX_SHARDS):,} for {i.count:,} identities (at most {MAX_SHARDS:,} "
                f"shards: the plan and the manifest hold one entry each), got {i.shard_size}",
            )
        if self.dataset.identities > self.identities.count:
            raise _CrossFieldError(
                "dataset.identities",
                f"must be <= identities.count ({self.identities.count}), got {self.dataset.identities}",
            )
        variants = self.identities.variants_per_identity
        if self.dataset.images_per_identity > variants:
            raise _CrossFieldError(
                "dataset.images_per_identity",
                f"must be <= the {variants} candidates generated per identity "
                f"(identities.images_per_identity x identities.oversample), got {self.dataset.images_per_identity}",
            )
        f = self.filter
        if f.min_serfiq > 0 and self.embed.serfiq_passes < 2:
            raise _CrossFieldError(
                "filter.min_serfiq",
                f"needs embed.serfiq_passes >= 2 (with {self.embed.serfiq_passes} every sample scores 1.0, so the "
                "rule would pass everything); raise embed.serfiq_passes or set filter.min_serfiq: 0",
            )
        if self.identities.separation is not None and self.balance.mode == "steer":
            raise _CrossFieldError(
                "identities.separation",
                "does not combine with balance.mode: steer (steering moves the identities separation chose); "
                "set one of them",
            )
        if f.min_disc_logit is not None and not self.generator.disc_score:
            raise _CrossFieldError(
                "filter.min_disc_logit",
                "needs generator.disc_score: true (without it no candidate has a q_disc score; the discriminator costs "
                "about as much compute as the generator); set one or the other",
            )
        for key, scorer in ARTIFACT_RULES.items():
            if getattr(f, key) is not None and scorer not in self.artifacts.scorers:
                raise _CrossFieldError(
                    f"filter.{key}",
                    f"needs the {scorer!r} scorer in artifacts.scorers (without "
                    "it no candidate has its score); add it (and regenerate) or set it to null",
                )
        if self.artifacts.plant > 0 and self.generator.model != "smoke":
            raise _CrossFieldError("artifacts.plant", "plants in the smoke renderer only; set generator.model: smoke")
        return self

    def section_fingerprint(self, *names: str, without: tuple[str, ...] = ()) -> str:
        """sha256 over the named sections (dotted paths allowed), `without` the keys named (dotted paths):
        what a stage's output depends on."""
        data = self.model_dump(mode="json")
        for name in without:
            *parents, last = name.split(".")
            functools.reduce(dict.__getitem__, parents, data).pop(last)
        picked = {name: functools.reduce(dict.__getitem__, name.split("."), data) for name in names}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


class _CrossFieldError(ValueError):
    """A rule that spans sections; carries the key path it reports under."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(message)
