"""Registration into VLMEvalKit's own registries, run by the startup hook after ``vlmeval.config``.

Adds: ``<name>-BoN<N>`` for every model in ``supported_VLM`` (N in ``BON_SIZES``); the demo's local
models (trained and tiny), only when ``VLMEVAL_PRM_DEMO=1`` (``vlmeval-prm demo`` and the tests set it); the plugin's
datasets (first in ``DATASET_CLASSES`` so their names resolve to them);
``BestOfN``/``TransformersChat``/``PRMJudge`` as ``vlmeval.vlm`` attributes for ``--config`` JSON.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import sys
from functools import partial

from vlmeval_prm.constants import DEFAULT_PRM_SPEC, DEMO_ENV, OPTIONS_ENV, SPEC_ENV
from vlmeval_prm.demo.paths import prm_path as shapes_prm_path
from vlmeval_prm.logs import get_logger

log = get_logger(__name__)

BON_SIZES = (2, 4, 8, 16, 32, 64)
TINY_POLICY = "VLMEvalPRM-TinyPolicy"
TINY_PRM = "VLMEvalPRM-TinyPRM"
TINY_PRM_SPEC = "transformers:tiny:prm"
#: The demo's policy trained on its synthetic task; its Best-of-N names score with the PRM trained with it.
SHAPES_POLICY = "VLMEvalPRM-ShapesPolicy"


class LazyClass:
    """Stands in for one of our classes until it is called.

    Registration then imports nothing of ours that needs vlmeval, which keeps it fast and free of
    import cycles (importing ``vlmeval_prm.host.bon`` first imports vlmeval, which runs this plugin).
    VLMEvalKit only ever calls what it finds in ``supported_VLM`` or ``vlmeval.vlm``.
    """

    def __init__(self, target: str):
        self.target = target
        self.__name__ = target.rpartition(":")[2]

    def resolve(self) -> type:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<lazy {self.target}>"


BestOfN = LazyClass("vlmeval_prm.host.bon:BestOfN")
TransformersChat = LazyClass("vlmeval_prm.policy.transformers_chat:TransformersChat")
PRMJudge = LazyClass("vlmeval_prm.host.prm_judge:PRMJudge")

#: Models that are PRMs, not policies: no Best-of-N names for them. ``VLMEVAL_PRM_SPEC`` overrides the spec.
PRM_MODELS = {
    "VisualPRM-8B": partial(PRMJudge, prm=DEFAULT_PRM_SPEC, spec_env=SPEC_ENV),
    TINY_PRM: partial(PRMJudge, prm=TINY_PRM_SPEC, spec_env=SPEC_ENV),
}
POLICY_MODELS = {
    TINY_POLICY: partial(TransformersChat, model_path="tiny:policy", max_new_tokens=48),
    SHAPES_POLICY: partial(LazyClass("vlmeval_prm.demo.models:ShapesPolicy")),
}
#: The demo's tiny random models: not for real use, so absent unless the demo asks for them.
DEMO_MODELS = frozenset({TINY_POLICY, TINY_PRM, SHAPES_POLICY})


def demo_enabled() -> bool:
    return os.environ.get(DEMO_ENV) == "1"


def bon_name(base: str, n: int) -> str:
    return f"{base}-BoN{n}"


#: ``BestOfN`` keyword arguments ``VLMEVAL_PRM_OPTIONS`` may set (tests check them against its signature).
BON_OPTIONS = (
    "prm_options",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "first_greedy",
    "aggregate",
    "batch_size",
    "max_steps",
    "step_prompt",
    "orm",
    "retry_failed",
)
#: Keys a registered name fixes itself, with what to do instead.
RESERVED_OPTIONS = {
    "model": "is the name's base model (<model>-BoN<N>)",
    "n": "is the N of the name (<model>-BoN<N>)",
    "name": "is the registered name itself",
    "prm": f"is set by {SPEC_ENV}",
}


class OptionsError(ValueError):
    """``VLMEVAL_PRM_OPTIONS`` is not a valid set of BestOfN options."""


def bon_options() -> dict:
    """Extra BestOfN settings for registered names, from ``VLMEVAL_PRM_OPTIONS`` (a JSON object of
    ``BON_OPTIONS``). Raises OptionsError naming the variable; never echoes its value, which may hold
    a key in ``prm_options``."""
    raw = os.environ.get(OPTIONS_ENV)
    if not raw:
        return {}
    try:
        opts = json.loads(raw)
    except ValueError as exc:
        raise OptionsError(f"{OPTIONS_ENV} is not valid JSON: {exc}") from None
    if not isinstance(opts, dict):
        raise OptionsError(f"{OPTIONS_ENV} must be a JSON object of BestOfN options, got a {type(opts).__name__}")
    problems = [f"{key!r} {why}" for key, why in RESERVED_OPTIONS.items() if key in opts]
    for key in sorted(k for k in opts if k not in BON_OPTIONS and k not in RESERVED_OPTIONS):
        close = difflib.get_close_matches(key, BON_OPTIONS, n=1)
        problems.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if problems:
        raise OptionsError(
            f"{OPTIONS_ENV}: {'; '.join(problems)}. Valid keys: {', '.join(BON_OPTIONS)} "
            "(base model settings go in a --config JSON)"
        )
    return opts


class RefuseToBuild:
    """Registered in place of BestOfN when ``VLMEVAL_PRM_OPTIONS`` is invalid: VLMEvalKit's import and
    every other model stay intact, and building a Best-of-N model raises the error, before any model
    loads."""

    __name__ = "BestOfN"

    def __init__(self, error: str):
        self.error = error

    def __call__(self, *args, **kwargs):
        raise OptionsError(self.error)

    def __repr__(self) -> str:
        return f"<BestOfN refused: {self.error}>"


def register_models(supported_VLM: dict) -> None:
    demo = demo_enabled()
    for name, factory in {**POLICY_MODELS, **PRM_MODELS}.items():
        if demo or name not in DEMO_MODELS:
            supported_VLM.setdefault(name, factory)


def register_bon(supported_VLM: dict) -> None:
    try:
        opts, factory = bon_options(), BestOfN
    except OptionsError as exc:
        log.error("%s; every -BoN<N> name will refuse to build until it is fixed", exc)
        opts, factory = {}, RefuseToBuild(str(exc))
    demo_prms = {
        TINY_POLICY: os.environ.get(SPEC_ENV, TINY_PRM_SPEC),
        SHAPES_POLICY: os.environ.get(SPEC_ENV, f"transformers:{shapes_prm_path()}"),
    }
    for base in [k for k in supported_VLM if "-BoN" not in k and k not in PRM_MODELS]:
        extra = {"prm": demo_prms[base]} if base in demo_prms else {}
        for n in BON_SIZES:
            supported_VLM.setdefault(
                bon_name(base, n), partial(factory, model=base, n=n, name=bon_name(base, n), **extra, **opts)
            )


def register_classes() -> None:
    """``"class": "BestOfN"`` (etc.) in ``--config`` JSON resolves through ``vlmeval.vlm``."""
    import vlmeval.vlm

    for cls in (BestOfN, TransformersChat, PRMJudge):
        if not hasattr(vlmeval.vlm, cls.__name__):
            setattr(vlmeval.vlm, cls.__name__, cls)


def register_datasets() -> None:
    """When one of our dataset modules was the first importer of vlmeval, the datasets package is
    still initialising here; it registers itself once complete (``vlmeval_prm.datasets``)."""
    package = sys.modules.get("vlmeval_prm.datasets")
    if package is not None and not hasattr(package, "register"):
        return
    from vlmeval_prm.datasets import register

    register()


def wrap_inference() -> None:
    import vlmeval.inference as inference

    from vlmeval_prm.host.run_context import wrap_api_pipeline, wrap_infer_data, wrap_infer_data_job

    inference.infer_data = wrap_infer_data(inference.infer_data)
    inference.infer_data_job = wrap_infer_data_job(inference.infer_data_job)  # before run.py imports it
    try:  # ms-vlmeval's --api-mode pipeline; absent from upstream VLMEvalKit
        from vlmeval.inference_api import APIEvalPipeline
    except ImportError:
        return
    wrap_api_pipeline(APIEvalPipeline)


def register() -> None:
    """Entry point of group ``vlmeval.plugins``. Each part fails alone, with one logged error."""
    from vlmeval.config import supported_VLM

    steps = (
        partial(register_models, supported_VLM),
        register_classes,
        register_datasets,
        wrap_inference,
        partial(register_bon, supported_VLM),
    )
    for step in steps:
        try:
            step()
        except Exception as exc:
            log.error("%s failed: %s: %s", getattr(step, "func", step).__name__, type(exc).__name__, exc)


# BoN names are derived from every model, including other plugins': run after them.
register.vlmeval_plugin_order = 100
