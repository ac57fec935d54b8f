"""Switch a VLMEvalKit model from its greedy evaluation settings to sampling, one family at a time.

VLMEvalKit wrappers keep their generation settings in per-family places (``self.kwargs``,
``self.generate_kwargs``, values hard-coded inside ``generate_inner``), and API wrappers take them
per request. An adapter knows where one family keeps them, samples N candidates with the requested
settings and leaves the model as it found it. The registry is keyed by class *name* (matched along
the MRO) so that importing this module does not import vlmeval.

Local adapters change model state for the duration of one call: they are not thread-safe, which
is fine because VLMEvalKit runs a local model one call at a time. API adapters change nothing on
the model (``--api-nproc`` threads share it) and send the settings with each request.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SamplingConfig", "Sample", "SamplingAdapter", "UnsupportedPolicyError",
           "register_adapter", "get_adapter", "supported_families"]


@dataclass
class SamplingConfig:
    """Requested sampling settings.

    ``top_k=None`` means no top-k cut-off: local families get ``top_k=0`` (which also undoes
    VLMEvalKit's ``top_k=1`` for Qwen2-VL); API requests omit ``top_k``, so the server's
    default applies. ``max_new_tokens=None`` keeps the model's own limit.
    """

    temperature: float = 0.7  # paper default
    top_p: float = 0.95
    top_k: int | None = None
    max_new_tokens: int | None = None
    first_greedy: bool = False  # candidate 0 greedy, as VLMEvalKit's built-in BoN does

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 2:
            raise ValueError(f"top_k must be None or >= 2 (top_k=1 is greedy), got {self.top_k}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be None or >= 1, got {self.max_new_tokens}")

    def to_record(self) -> dict:
        return asdict(self)


@dataclass
class Sample:
    """One candidate. ``settings`` are the ones used for it, in family-neutral names
    (do_sample, temperature, top_p, top_k, max_new_tokens; None = left to the model or server)."""

    text: str | None
    error: str | None
    settings: dict

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None

    def to_record(self) -> dict:
        return {"text": self.text, "error": self.error, "settings": self.settings}


class UnsupportedPolicyError(ValueError):
    """The model cannot be made to sample with the requested settings."""


_REGISTRY: dict[str, type[SamplingAdapter]] = {}


def register_adapter(*class_names: str) -> Callable[[type[SamplingAdapter]], type[SamplingAdapter]]:
    """Class decorator: use this adapter for models whose class, or a base class, has one of these names."""
    if not class_names:
        raise ValueError("register_adapter needs at least one class name")

    def decorate(adapter_cls: type[SamplingAdapter]) -> type[SamplingAdapter]:
        for name in class_names:
            known = _REGISTRY.get(name)
            if known is not None and known is not adapter_cls:
                raise ValueError(f"{name} already has the adapter {known.__name__}")
            _REGISTRY[name] = adapter_cls
        return adapter_cls

    return decorate


def supported_families() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(model: Any) -> SamplingAdapter:
    """The adapter of the nearest registered class in the model's MRO, after checking that this
    model's configuration can sample; raises UnsupportedPolicyError otherwise."""
    for klass in type(model).__mro__:
        adapter_cls = _REGISTRY.get(klass.__name__)
        if adapter_cls is not None:
            adapter = adapter_cls()
            adapter.check(model)
            return adapter
    raise UnsupportedPolicyError(
        f"{describe(model)} has no sampling adapter, so Best-of-N would get N identical greedy "
        f"answers; supported families: {', '.join(supported_families())}")


def describe(model: Any) -> str:
    cls = type(model)
    return f"{cls.__name__} ({cls.__module__})"


# -- helpers that change model state for one call and put it back --------------------------------

_MISSING = object()


@contextlib.contextmanager
def patched_items(target: dict, updates: dict) -> Iterator[None]:
    """Set dict entries; afterwards restore old values and remove entries that were absent."""
    saved = {k: target.get(k, _MISSING) for k in updates}
    target.update(updates)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is _MISSING:
                target.pop(k, None)
            else:
                target[k] = v


@contextlib.contextmanager
def rewritten_call(obj: Any, method: str, rewrite: Callable[[dict], dict]) -> Iterator[None]:
    """Shadow ``obj.method`` with an instance attribute that rewrites its keyword arguments, for
    families that hard-code settings at the call site; the instance attribute goes away afterwards."""
    own = vars(obj).get(method, _MISSING)
    original = getattr(obj, method)

    def call(*args, **kwargs):
        return original(*args, **rewrite(kwargs))

    setattr(obj, method, call)
    try:
        yield
    finally:
        if own is _MISSING:
            delattr(obj, method)
        else:
            setattr(obj, method, own)


class PipelineProxy:
    """Stands in for an lmdeploy pipeline during one call and sets fields of the GenerationConfig
    it is given (VLMEvalKit builds that config inside generate_inner, often without do_sample,
    which lmdeploy then treats as greedy)."""

    def __init__(self, pipe: Any, fields: dict):
        self._pipe, self._fields = pipe, fields

    def __call__(self, *args, gen_config=None, **kwargs):
        if gen_config is None:
            raise TypeError("lmdeploy pipeline called without gen_config; cannot apply sampling settings")
        gen_config = copy.copy(gen_config)
        for key, value in self._fields.items():
            setattr(gen_config, key, value)
        return self._pipe(*args, gen_config=gen_config, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


@contextlib.contextmanager
def lmdeploy_pipeline(model: Any, fields: dict) -> Iterator[None]:
    pipe = model.model
    model.model = PipelineProxy(pipe, fields)
    try:
        yield
    finally:
        model.model = pipe


def as_text(raw: Any) -> str:
    """VLMEvalKit models return a str, a one-element list (LLaVA_OneVision_1_5) or a dict with
    ``prediction`` (API wrappers that log extra records)."""
    if isinstance(raw, dict):
        raw = raw.get("prediction")
    if isinstance(raw, (list, tuple)) and len(raw) == 1:
        raw = raw[0]
    if not isinstance(raw, str):
        raise TypeError(f"model returned {type(raw).__name__}, not text")
    if not raw.strip():
        raise ValueError("empty response")
    return raw


# -- adapters -----------------------------------------------------------------------------------

class SamplingAdapter:
    """Default: N sequential ``model.generate`` calls, each with the family's settings attribute
    (``settings_attr``, a dict of HF generate kwargs) switched to sampling and restored afterwards."""

    name: str = "base"
    #: Name of the dict attribute holding the family's generation kwargs, or None.
    settings_attr: str | None = None
    #: What ``SamplingConfig.top_k=None`` is sent as: 0 (no cut-off) or None (not sent).
    top_k_off: int | None = 0

    def check(self, model: Any, dataset: str | None = None) -> None:
        """Raise UnsupportedPolicyError when this model, as configured, cannot sample."""
        if self.settings_attr is not None and not isinstance(getattr(model, self.settings_attr, None), dict):
            raise UnsupportedPolicyError(
                f"{describe(model)} has no dict attribute {self.settings_attr!r} holding its "
                f"generation settings, so the {self.name} adapter cannot switch it to sampling")

    def settings(self, cfg: SamplingConfig, greedy: bool) -> dict:
        if greedy:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                    "max_new_tokens": cfg.max_new_tokens}
        return {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "top_k": self.top_k_off if cfg.top_k is None else cfg.top_k,
                "max_new_tokens": cfg.max_new_tokens}

    def generation_kwargs(self, settings: dict) -> dict:
        """Settings in the family's own vocabulary; HF ``generate`` names by default."""
        return {k: v for k, v in settings.items() if v is not None}

    def applied(self, model: Any, settings: dict) -> contextlib.AbstractContextManager:
        if self.settings_attr is None:
            raise NotImplementedError(f"{type(self).__name__} must set settings_attr or override applied()")
        return patched_items(getattr(model, self.settings_attr), self.generation_kwargs(settings))

    def generate_one(self, model: Any, message: Any, dataset: str | None, settings: dict) -> str:
        with self.applied(model, settings):
            raw = model.generate(message=message, dataset=dataset)
        return as_text(raw)

    def sample(self, model: Any, message: Any, dataset: str | None, n: int, cfg: SamplingConfig,
               greedy_first: bool | None = None,
               on_sample: Callable[[int, Sample], None] | None = None) -> list[Sample]:
        """N candidates; a failure of one candidate is a Sample with error set, never an exception.

        ``greedy_first`` (default ``cfg.first_greedy``) makes candidate 0 greedy; a caller that
        regenerates only some candidates passes False when candidate 0 is not among them.
        ``on_sample(i, sample)`` is called as each candidate of these one-by-one calls exists, so
        the caller can store it before the next call (adapters that make one call for all N don't).
        A model that cannot sample at all raises UnsupportedPolicyError before any call.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.check(model, dataset)
        greedy_first = cfg.first_greedy if greedy_first is None else greedy_first
        out = []
        for i in range(n):
            settings = self.settings(cfg, greedy=greedy_first and i == 0)
            try:
                # a fresh copy per call: VLMEvalKit's generate edits message items in place
                text = self.generate_one(model, copy.deepcopy(message), dataset, settings)
            except Exception as exc:  # one candidate's failure must not cost the others
                out.append(Sample(text=None, error=f"{type(exc).__name__}: {exc}", settings=settings))
            else:
                out.append(Sample(text=text, error=None, settings=settings))
            if on_sample is not None:
                on_sample(i, out[-1])
        return out

    def enable_cot(self, model: Any) -> bool:
        """Switch on the family's own chain-of-thought mode; False when it has none (the caller
        then appends a step-by-step instruction)."""
        return False
