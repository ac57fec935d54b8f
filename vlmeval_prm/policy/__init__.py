"""Stage 1, sample: switch any VLMEvalKit model to sampling and draw N candidates.

Adapters register by VLMEvalKit class name (``base.register_adapter``); importing this package
loads the built-in families without importing vlmeval.
"""

from vlmeval_prm.policy import api, local  # noqa: F401  (register the built-in adapters)
from vlmeval_prm.policy.base import (
           Sample,
           SamplingAdapter,
           SamplingConfig,
           UnsupportedPolicyError,
           get_adapter,
           supported_families,
)

__all__ = ["Sample", "SamplingAdapter", "SamplingConfig", "UnsupportedPolicyError", "get_adapter",
           "supported_families"]
