"""Typed params: the schema (`schema`) and params.yaml loaded over its preset and validated (`load`).

Pure schema: it imports no plug-in. Names that registries define (generators, detectors, estimators,
executors, attribute classes) are checked right after loading by `pipeline.plugins.check_plugins`.
"""

from pipeline.config.load import (
    CONFIGS_DIR,
    _read_yaml,
    available_presets,
    deep_merge,
    drop_nulls,
    load_params,
    validate_params,
)
from pipeline.config.schema import (
    AlignParams,
    AttributesParams,
    BalanceParams,
    CalibrateParams,
    DatasetParams,
    DedupParams,
    DetectParams,
    EmbedParams,
    ExportParams,
    FilterParams,
    GeneratorParams,
    IdentitiesParams,
    JudgeParams,
    Params,
    RuntimeParams,
    VariationParams,
)

__all__ = [
    "CONFIGS_DIR",
    "AlignParams",
    "AttributesParams",
    "BalanceParams",
    "CalibrateParams",
    "DatasetParams",
    "DedupParams",
    "DetectParams",
    "EmbedParams",
    "ExportParams",
    "FilterParams",
    "GeneratorParams",
    "IdentitiesParams",
    "JudgeParams",
    "Params",
    "RuntimeParams",
    "VariationParams",
    "_read_yaml",
    "available_presets",
    "deep_merge",
    "drop_nulls",
    "load_params",
    "validate_params",
]
