"""Stage 1, sample: switch any VLMEvalKit model to sampling and draw N candidates.

Adapters register by VLMEvalKit class name (``base.register_adapter``); importing this package
loads the built-in families without importing vlmeval.
"""

from vlmeval_prm.policy import api, catalog, local  # noqa: F401  (register the built-in adapters)
from vlmeval_prm.policy.base import (
    ModelSpec,
    Route,
    Sample,
    SamplingAdapter,
    SamplingConfig,
    UnsupportedPolicyError,
    get_adapter,
    route_of,
    supported_families,
)

__all__ = [
    "ModelSpec",
    "Route",
    "Sample",
    "SamplingAdapter",
    "SamplingConfig",
    "UnsupportedPolicyError",
    "get_adapter",
    "route_of",
    "supported_families",
]
