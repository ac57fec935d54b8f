"""Dataset classes the plugin registers in VLMEvalKit (inserted first in ``DATASET_CLASSES``)."""

from .mini_mcq import VLMEvalPRMMiniMCQ
from .visualprocessbench import VisualProcessBench

DATASET_CLASSES = [VLMEvalPRMMiniMCQ, VisualProcessBench]

# Registers the classes when one of our dataset modules was the first to import vlmeval (the
# startup hook then ran while this package was incomplete); otherwise a no-op repeat.
if "vlmeval.config" in __import__("sys").modules:
    from ..plugin import register_datasets

    register_datasets()
