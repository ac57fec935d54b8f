"""Switch a VLMEvalKit model from its greedy evaluation settings to sampling, one family at a time.

VLMEvalKit wrappers keep their generation settings in per-family places (``self.kwargs``,
``self.generate_kwargs``, values hard-coded inside ``generate_inner``), and API wrappers take them
per request. An adapter knows where one family's settings reach the engine, samples N candidates
with the requested settings and leaves the model as it found it.

The registry is keyed by class *name*, matched along the MRO (so importing this module does not
import vlmeval). ``BaseModel`` and ``BaseAPI`` themselves are registered too: every local class
without an adapter of its own gets the generic transformers route, every API class without one is
reported unsupported. One function, ``SamplingAdapter.route``, decides what happens to a model: it
reads a built model or a not-yet-built :class:`ModelSpec` (class + constructor kwargs) alike, so
``vlmeval-prm models`` reports the route that runs.

Local adapters change model state for the duration of one call: they are not thread-safe, which
is fine because VLMEvalKit runs a local model one call at a time. API adapters change nothing on
the model (``--api-nproc`` threads share it) and send the settings with each request.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from vlmeval_prm.policy.code import entry, owner

__all__ = [
    "SamplingConfig",
    "Sample",
    "Route",
    "ModelSpec",
    "SamplingAdapter",
    "UnsupportedPolicyError",
    "ROUTES",
    "register_adapter",
    "adapter_for",
    "get_adapter",
    "route_of",
    "supported_families",
    "registered_names",
    "is_transient",
    "permanent_failure",
]

#: What ``vlmeval-prm models`` reports: N candidates in one engine call; one API request with n=N;
#: N concurrent API requests; N calls one after another; cannot sample.
ROUTES = ("batched", "api-n", "api-parallel", "sequential", "unsupported")

#: Keys of a Sample's ``settings``, in family-neutral names (None = left to the model or server).
SETTING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "max_new_tokens")


@dataclass
class SamplingConfig:
    """Requested sampling settings.

    ``top_k=None`` means no top-k cut-off: local families get ``top_k=0`` (which also undoes
    VLMEvalKit's ``top_k=1`` for Qwen2-VL); API requests omit ``top_k``, so the server's
    default applies. ``max_new_tokens=None`` keeps the model's own limit, except where a family
    caps it below what a step-by-step answer needs (the adapter then raises it to
    ``reasoning_tokens``). ``batch_size``: at most this many candidates per engine call on the
    batched routes (None: all N in one call).
    """

    temperature: float = 0.7  # paper default
    top_p: float = 0.95
    top_k: int | None = None
    max_new_tokens: int | None = None
    first_greedy: bool = False  # candidate 0 greedy, as VLMEvalKit's built-in BoN does
    batch_size: int | None = None
    reasoning_tokens: int = 2048

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 2:
            raise ValueError(f"top_k must be None or >= 2 (top_k=1 is greedy), got {self.top_k}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be None or >= 1, got {self.max_new_tokens}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be None or >= 1, got {self.batch_size}")
        if self.reasoning_tokens < 1:
            raise ValueError(f"reasoning_tokens must be >= 1, got {self.reasoning_tokens}")

    def to_record(self) -> dict:
        return asdict(self)


#: Exception classes (by name, anywhere in the MRO, so no client library is imported to check) of
#: failures that may not happen again: connection errors, timeouts, out of memory, overloaded servers.
TRANSIENT_ERRORS = frozenset(
    {
        "ConnectionError",  # builtin (refused, reset, ...) and requests'
        "TimeoutError",
        "Timeout",  # requests
        "TransportError",  # httpx: connection errors and timeouts
        "APIConnectionError",  # openai, anthropic (their timeouts derive from it)
        "InternalServerError",
        "RateLimitError",
        "OutOfMemoryError",  # torch
        "MemoryError",
    }
)


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may not happen again: a ``TRANSIENT_ERRORS`` class, an HTTP 5xx, 408 or 429
    (the status on the exception or its response), or an API wrapper's failure answer (VLMEvalKit's
    ``BaseAPI`` hides the status after its own retries and retries those rows on the next run itself).
    A chained cause counts too."""
    from vlmeval.inference import FAIL_MSG

    if any(klass.__name__ in TRANSIENT_ERRORS for klass in type(exc).__mro__):
        return True
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and (status >= 500 or status in (408, 429)):
        return True
    if isinstance(exc, RuntimeError) and str(exc).startswith(FAIL_MSG):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and is_transient(cause)


@dataclass
class Sample:
    """One candidate. ``settings`` are the ones used for it, in family-neutral names
    (do_sample, temperature, top_p, top_k, max_new_tokens; None = left to the model or server).
    ``exception``: what a failed candidate raised (None when unknown), for ``permanent_failure``."""

    text: str | None
    error: str | None
    settings: dict
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None

    def to_record(self) -> dict:
        return {"text": self.text, "error": self.error, "settings": self.settings}


@dataclass(frozen=True)
class Route:
    """How a model samples (one of ROUTES) and why, in words for ``vlmeval-prm models``."""

    route: str
    reason: str

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {self.route!r}")

    @property
    def can_sample(self) -> bool:
        return self.route != "unsupported"


@dataclass(frozen=True)
class ModelSpec:
    """A model that is not built: its class and constructor kwargs (a ``supported_VLM`` partial or a
    ``--config`` dict). ``get`` answers like ``getattr`` on the built model would for settings that
    are constructor arguments: the given kwarg, else the constructor's default, else a class attribute."""

    cls: type
    kwargs: dict = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        defaults = _init_defaults(self.cls)
        if name in defaults:
            return defaults[name]
        return getattr(self.cls, name, default)


@functools.cache
def _init_defaults(cls: type) -> dict:
    out: dict = {}
    for klass in reversed(cls.__mro__):
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        out.update((p.name, p.default) for p in params if p.default is not inspect.Parameter.empty)
    return out


def attr(model: Any, name: str, default: Any = None) -> Any:
    """A setting of a built model or of a ModelSpec."""
    if isinstance(model, ModelSpec):
        return model.get(name, default)
    return getattr(model, name, default)


def model_class(model: Any) -> type:
    return model.cls if isinstance(model, ModelSpec) else type(model)


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


def registered_names(adapter_cls: type[SamplingAdapter]) -> list[str]:
    """The class names ``adapter_cls`` is registered for."""
    return sorted(name for name, known in _REGISTRY.items() if known is adapter_cls)


def supported_families() -> list[str]:
    return sorted(_REGISTRY)


def adapter_for(cls: type) -> tuple[type[SamplingAdapter] | None, str | None]:
    """The adapter of the nearest registered class in ``cls``'s MRO whose code ``cls`` runs, and why
    nearer ones were passed over (None when none was). A family adapter was checked against the
    ``generate_inner`` of the classes it is registered for; when ``cls`` overrides it below such a
    class, the adapter applies only if ``fits_code`` finds in the new code what it relies on, else
    the search goes on up the MRO (to the generic route of ``BaseModel``)."""
    method = entry(cls)
    impl = owner(cls, method)
    passed: list[str] = []
    for klass in cls.__mro__:
        adapter_cls = _REGISTRY.get(klass.__name__)
        if adapter_cls is None:
            continue
        why = None if impl is None or impl in klass.__mro__ else adapter_cls.fits_code(cls)
        if why is None:
            return adapter_cls, "; ".join(passed) or None
        passed.append(
            f"{cls.__name__}.{method} is {impl.__name__}'s own, not {klass.__name__}'s, so the "
            f"{adapter_cls.name} route does not apply ({why})"
        )
    return None, "; ".join(passed) or None


def route_of(model: Any) -> tuple[SamplingAdapter | None, Route]:
    """(adapter, route) of a built model or a ModelSpec, without raising."""
    adapter_cls, passed = adapter_for(model_class(model))
    if adapter_cls is None:
        return None, Route("unsupported", passed or f"{describe(model)} is not a VLMEvalKit model class")
    adapter = adapter_cls()
    route = adapter.route(model)
    return adapter, Route(route.route, f"{passed}. {route.reason}") if passed else route


def get_adapter(model: Any) -> SamplingAdapter:
    """The adapter of the nearest registered class in the model's MRO, after checking that this
    model's configuration can sample; raises UnsupportedPolicyError otherwise."""
    adapter, route = route_of(model)
    if adapter is None or not route.can_sample:
        raise UnsupportedPolicyError(
            f"{describe(model)} cannot sample, so Best-of-N would get N identical greedy answers: {route.reason}"
        )
    adapter.check(model)
    return adapter


def describe(model: Any) -> str:
    cls = model_class(model)
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
def patched_attrs(obj: Any, updates: dict) -> Iterator[None]:
    """Set attributes; afterwards restore them (removing those that were not instance attributes)."""
    own = vars(obj)
    saved = {k: own.get(k, _MISSING) for k in updates}
    for k, v in updates.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is _MISSING:
                delattr(obj, k)
            else:
                setattr(obj, k, v)


@contextlib.contextmanager
def shadowed(obj: Any, method: str, make: Callable[[Callable], Callable]) -> Iterator[None]:
    """Shadow ``obj.method`` with an instance attribute ``make(original)`` for one call; the
    instance attribute goes away afterwards (or the one that was there comes back)."""
    own = vars(obj).get(method, _MISSING)
    setattr(obj, method, make(getattr(obj, method)))
    try:
        yield
    finally:
        if own is _MISSING:
            delattr(obj, method)
        else:
            setattr(obj, method, own)


def rewritten_call(obj: Any, method: str, rewrite: Callable[[dict], dict]) -> contextlib.AbstractContextManager:
    """Shadow ``obj.method`` with a call that rewrites its keyword arguments, for families that
    hard-code settings at the call site."""

    def make(original: Callable) -> Callable:
        def call(*args, **kwargs):
            return original(*args, **rewrite(kwargs))

        return call

    return shadowed(obj, method, make)


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


def failed(exc: BaseException, settings: dict) -> Sample:
    return Sample(text=None, error=f"{type(exc).__name__}: {exc}", settings=settings, exception=exc)


def permanent_failure(samples: list[Sample]) -> BaseException | None:
    """The exception every one of ``samples`` failed with, when it is one and the same (type and
    message) and not transient: the policy cannot answer at all. None otherwise, and when a failure's
    exception is unknown."""
    errors = {s.error for s in samples}
    exc = samples[0].exception if samples else None
    if len(errors) != 1 or None in errors or any(s.exception is None for s in samples) or is_transient(exc):
        return None
    return exc


# -- adapters -----------------------------------------------------------------------------------


class SamplingAdapter:
    """Default: N sequential ``model.generate`` calls, each with the family's settings attribute
    (``settings_attr``, a dict of HF generate kwargs) switched to sampling and restored afterwards."""

    name: str = "base"
    #: Name of the dict attribute holding the family's generation kwargs, or None.
    settings_attr: str | None = None
    #: What ``SamplingConfig.top_k=None`` is sent as: 0 (no cut-off) or None (not sent).
    top_k_off: int | None = 0

    @classmethod
    def fits_code(cls, klass: type) -> str | None:
        """Whether this adapter applies to ``klass``, a subclass of a registered class that overrides
        ``generate_inner``: None if so, else why not. Family adapters that rely on how their
        classes' code passes settings override it; by default nothing class-specific is relied on."""
        return None

    def route(self, model: Any) -> Route:
        """What sampling ``model`` (built, or a ModelSpec) gets; the one place this is decided."""
        where = f"self.{self.settings_attr}" if self.settings_attr else "the family's settings"
        return Route("sequential", f"{self.name}: N generate calls, sampling settings set in {where}")

    def check(self, model: Any, dataset: str | None = None) -> None:
        """Raise UnsupportedPolicyError when this built model, as configured, cannot sample."""
        route = self.route(model)
        if not route.can_sample:
            raise UnsupportedPolicyError(f"{describe(model)}: {route.reason}")
        if self.settings_attr is not None and not isinstance(getattr(model, self.settings_attr, None), dict):
            raise UnsupportedPolicyError(
                f"{describe(model)} has no dict attribute {self.settings_attr!r} holding its "
                f"generation settings, so the {self.name} adapter cannot switch it to sampling"
            )

    def settings(self, cfg: SamplingConfig, greedy: bool) -> dict:
        if greedy:
            return {
                "do_sample": False,
                "temperature": None,
                "top_p": None,
                "top_k": None,
                "max_new_tokens": cfg.max_new_tokens,
            }
        return {
            "do_sample": True,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "top_k": self.top_k_off if cfg.top_k is None else cfg.top_k,
            "max_new_tokens": cfg.max_new_tokens,
        }

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

    def sample(
        self,
        model: Any,
        message: Any,
        dataset: str | None,
        n: int,
        cfg: SamplingConfig,
        greedy_first: bool | None = None,
        on_sample: Callable[[int, Sample], None] | None = None,
    ) -> list[Sample]:
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
        with self.scope(model), self.raw_text(model):
            for i in range(n):
                settings = self.settings(cfg, greedy=greedy_first and i == 0)
                try:
                    # a fresh copy per call: VLMEvalKit's generate edits message items in place
                    text = self.generate_one(model, copy.deepcopy(message), dataset, settings)
                except Exception as exc:  # one candidate's failure must not cost the others
                    out.append(failed(exc, settings))
                else:
                    out.append(Sample(text=text, error=None, settings=settings))
                if on_sample is not None:
                    on_sample(i, out[-1])
        return out

    def enable_cot(self, model: Any) -> bool:
        """Switch on the family's own chain-of-thought mode; False when it has none (the caller
        then appends a step-by-step instruction). Process-wide switches (environment variables)
        are not set here but by ``scope``."""
        return False

    def scope(self, model: Any) -> contextlib.AbstractContextManager:
        """Process-wide state the family reads while building prompts or generating (e.g.
        InternVL's USE_COT), set only for the duration of such a call."""
        return contextlib.nullcontext()

    def raw_text(self, model: Any) -> contextlib.AbstractContextManager:
        """While active, the model returns its full reply instead of an extracted answer (families
        that trim a chain-of-thought reply to its final answer inside ``generate``)."""
        return contextlib.nullcontext()

    def final_answer(self, model: Any, text: str, dataset: str | None) -> str:
        """The answer the base model itself would return for its full reply ``text`` (its own
        CoT answer extraction); identity for families that extract nothing."""
        return text
