"""Registration into VLMEvalKit's own registries, run by the startup hook after ``vlmeval.config``.

Adds: ``<name>-BoN<N>`` for every model in ``supported_VLM`` (N in ``BON_SIZES``); the tiny local
models; the plugin's datasets (first in ``DATASET_CLASSES`` so their names resolve to them);
``BestOfN``/``HFChatModel``/``PRMJudge`` as ``vlmeval.vlm`` attributes for ``--config`` JSON.
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial

BON_SIZES = (2, 4, 8, 16, 32, 64)
TINY_POLICY = "VLMEvalPRM-TinyPolicy"
TINY_PRM_SPEC = "transformers:tiny:prm"


def bon_name(base: str, n: int) -> str:
    return f"{base}-BoN{n}"


def bon_options() -> dict:
    """Extra BestOfN settings for registered names, from ``VLMEVAL_PRM_OPTIONS`` (a JSON object)."""
    raw = os.environ.get("VLMEVAL_PRM_OPTIONS")
    if not raw:
        return {}
    opts = json.loads(raw)
    if not isinstance(opts, dict):
        raise ValueError("VLMEVAL_PRM_OPTIONS must be a JSON object")
    return opts


def register_models(supported_VLM: dict) -> None:
    from .local_policy import HFChatModel

    supported_VLM.setdefault(TINY_POLICY, partial(HFChatModel, model_path="tiny:policy", max_new_tokens=48))
    try:
        from .prm_judge import MODEL_FACTORIES
    except ImportError:  # VisualProcessBench support not installed in this checkout
        MODEL_FACTORIES = {}
    for name, factory in MODEL_FACTORIES.items():
        supported_VLM.setdefault(name, factory)


def register_bon(supported_VLM: dict) -> None:
    from .bon import BestOfN

    opts = bon_options()
    tiny_prm = os.environ.get("VLMEVAL_PRM_SPEC", TINY_PRM_SPEC)
    for base in [k for k in supported_VLM if "-BoN" not in k]:
        extra = {"prm": tiny_prm} if base == TINY_POLICY else {}
        for n in BON_SIZES:
            supported_VLM.setdefault(bon_name(base, n),
                                     partial(BestOfN, model=base, n=n, name=bon_name(base, n), **extra, **opts))


def register_classes() -> None:
    import vlmeval.vlm

    from .bon import BestOfN
    from .local_policy import HFChatModel

    classes = [BestOfN, HFChatModel]
    try:
        from .prm_judge import PRMJudge
        classes.append(PRMJudge)
    except ImportError:
        pass
    for cls in classes:
        setattr(vlmeval.vlm, cls.__name__, cls)


def register_datasets() -> None:
    import vlmeval.dataset as ds

    from .datasets import DATASET_CLASSES

    for cls in reversed(DATASET_CLASSES):
        if cls not in ds.DATASET_CLASSES:
            ds.DATASET_CLASSES.insert(0, cls)
            ds.SUPPORTED_DATASETS.extend(n for n in cls.supported_datasets() if n not in ds.SUPPORTED_DATASETS)
        setattr(ds, cls.__name__, cls)


def wrap_inference() -> None:
    import vlmeval.inference as inference

    from .run_context import wrap_infer_data

    inference.infer_data = wrap_infer_data(inference.infer_data)


def register() -> None:
    """Entry point of group ``vlmeval.plugins``. Each part fails alone, with one warning line."""
    from vlmeval.config import supported_VLM

    steps = (partial(register_models, supported_VLM), register_classes, register_datasets, wrap_inference,
             partial(register_bon, supported_VLM))
    for step in steps:
        try:
            step()
        except Exception as exc:
            name = getattr(step, "func", step).__name__
            sys.stderr.write(f"[vlmeval-prm] {name} failed: {type(exc).__name__}: {exc}\n")


# BoN names are derived from every model, including other plugins': run after them.
register.vlmeval_plugin_order = 100
