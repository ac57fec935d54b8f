"""Where VLMEvalKit is writing the current run, so the candidate store lands beside its outputs.

VLMEvalKit hands a model only (message, dataset name). The plugin wraps
``vlmeval.inference.infer_data`` to note its ``work_dir`` and ``model_name`` for the duration
of the call (process-wide, so ``--api-nproc`` worker threads see it too).
"""

from __future__ import annotations

import functools
import os

from vlmeval_prm.constants import STORE_DIR_ENV
from vlmeval_prm.store.paths import store_file

CURRENT: dict = {}


def wrap_infer_data(infer_data):
    if getattr(infer_data, "vlmeval_prm_wrapped", False):
        return infer_data

    @functools.wraps(infer_data)
    def wrapper(*args, **kwargs):
        bound = dict(zip(("model", "model_name", "work_dir"), args), **kwargs)
        CURRENT.update(work_dir=bound.get("work_dir"), model_name=bound.get("model_name"))
        try:
            return infer_data(*args, **kwargs)
        finally:
            CURRENT.clear()

    wrapper.vlmeval_prm_wrapped = True
    return wrapper


def store_path(model_name: str, dataset: str | None) -> str:
    """The store of the current VLMEvalKit run (its ``work_dir`` is run.py's pred_root); outside a
    run the folder is ``$VLMEVAL_PRM_STORE_DIR`` or ``./outputs/<model>``."""
    work_dir = CURRENT.get("work_dir") or os.environ.get(STORE_DIR_ENV) \
        or os.path.join("outputs", model_name)
    return store_file(work_dir, CURRENT.get("model_name") or model_name, dataset)
