"""Dataset classes the plugin registers in VLMEvalKit (inserted first in ``DATASET_CLASSES``)."""

from .mini_mcq import VLMEvalPRMMiniMCQ

DATASET_CLASSES = [VLMEvalPRMMiniMCQ]
