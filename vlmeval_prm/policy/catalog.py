"""The sampling route of every ``supported_VLM`` name, from the adapter registry (``vlmeval-prm models``).

A name's factory is a ``functools.partial`` of a VLMEvalKit class (or one of this plugin's lazy
classes) with constructor kwargs; the route comes from the same ``SamplingAdapter.route`` that
``BestOfN`` runs on the built model, read through a :class:`ModelSpec` instead of a built model.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

from vlmeval_prm.policy.base import ModelSpec, Route, SamplingAdapter, register_adapter, route_of


@dataclass(frozen=True)
class ModelRoute:
    """One row of ``vlmeval-prm models --json``."""

    name: str
    cls: str
    route: str
    reason: str

    def to_record(self) -> dict:
        rec = asdict(self)
        rec["class"] = rec.pop("cls")
        return {k: rec[k] for k in ("name", "class", "route", "reason")}


@register_adapter("PRMJudge")
class JudgeAdapter(SamplingAdapter):
    """This plugin's PRM judges (``VisualPRM-8B``): they score answers, they do not write them."""

    name = "prm_judge"

    def route(self, model: Any) -> Route:
        return Route("unsupported", f"{self.name}: a process reward model used as a judge, not a policy")


def factory_spec(factory: Any) -> ModelSpec:
    """Class and kwargs of a ``supported_VLM`` value (a partial, a class, or a lazy class)."""
    kwargs: dict = {}
    if isinstance(factory, functools.partial):
        factory, kwargs = factory.func, dict(factory.keywords)
    resolve = getattr(factory, "resolve", None)  # host.plugin.LazyClass
    if callable(resolve) and not isinstance(factory, type):
        factory = resolve()
    if not isinstance(factory, type):
        raise TypeError(f"{factory!r} is not a class")
    return ModelSpec(factory, kwargs)


#: Names that ``vlmeval.inference.infer_data`` builds with ``use_vllm=<--use-vllm>`` (ms-vlmeval 0.0.20).
VLLM_NAME_PARTS = ("Llama-4", "Qwen2-VL", "Qwen2.5-VL")


def model_routes(
    supported_vlm: dict, use_vllm: bool = False, skip_classes: tuple[str, ...] = ("BestOfN",)
) -> list[ModelRoute]:
    """Every name whose class is not in ``skip_classes`` (the Best-of-N names derived from the others),
    built as ``vlmeval.run`` would build it (``use_vllm``: its ``--use-vllm`` flag)."""
    out = []
    for name, factory in supported_vlm.items():
        try:
            spec = factory_spec(factory)
        except Exception as exc:  # a broken entry is reported, not skipped
            out.append(ModelRoute(name, "?", "unsupported", f"cannot read its factory: {type(exc).__name__}: {exc}"))
            continue
        if spec.cls.__name__ in skip_classes:
            continue
        if use_vllm and any(part in name for part in VLLM_NAME_PARTS):
            spec = ModelSpec(spec.cls, {**spec.kwargs, "use_vllm": True})
        _, route = route_of(spec)
        out.append(ModelRoute(name, spec.cls.__name__, route.route, route.reason))
    return out
