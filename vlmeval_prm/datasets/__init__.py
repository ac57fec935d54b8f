"""Datasets the plugin adds to VLMEvalKit (inserted first in ``DATASET_CLASSES``): the shipped mini
MCQ set, the demo's generated shapes task and VisualProcessBench (step-level evaluation of PRMs and critics)."""

import sys

from vlmeval_prm.datasets.mini_mcq import VLMEvalPRMMiniMCQ
from vlmeval_prm.datasets.shapes import VLMEvalPRMShapes
from vlmeval_prm.datasets.visualprocessbench import VisualProcessBench

DATASET_CLASSES = [VLMEvalPRMMiniMCQ, VLMEvalPRMShapes, VisualProcessBench]


def register() -> None:
    """Idempotent: our classes first in VLMEvalKit's ``DATASET_CLASSES`` (the first class that
    supports a name wins), their names in ``SUPPORTED_DATASETS``, the classes on ``vlmeval.dataset``."""
    import vlmeval.dataset as ds

    for cls in reversed(DATASET_CLASSES):
        if cls not in ds.DATASET_CLASSES:
            ds.DATASET_CLASSES.insert(0, cls)
            ds.SUPPORTED_DATASETS.extend(n for n in cls.supported_datasets() if n not in ds.SUPPORTED_DATASETS)
        setattr(ds, cls.__name__, cls)


# When one of our dataset modules was the first to import vlmeval, the startup hook ran while this
# package was incomplete and skipped it: register now.
if "vlmeval.config" in sys.modules:
    register()
