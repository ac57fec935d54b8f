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
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

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


_REGISTRY: dict[str, type["SamplingAdapter"]] = {}


def register_adapter(*class_names: str) -> Callable[[type["SamplingAdapter"]], type["SamplingAdapter"]]:
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


def get_adapter(model: Any) -> "SamplingAdapter":
    """The adapter of the nearest registered class in the model's MRO, after checking that this
    model's configuration can sample; raises UnsupportedPolicyError otherwise."""
    for klass in type(model).__mro__:
        adapter_cls = _REGISTRY.get(klass.__name__)
        if adapter_cls is not None:
            adapter = adapter_cls()
            adapter.check(model)
            return adapter
    raise UnsupportedPolicyError(
        f"{_describe(model)} has no sampling adapter, so Best-of-N would get N identical greedy "
        f"answers; supported families: {', '.join(supported_families())}")


def _describe(model: Any) -> str:
    cls = type(model)
    return f"{cls.__name__} ({cls.__module__})"


# -- helpers that change model state for one call and put it back --------------------------------

_MISSING = object()


@contextlib.contextmanager
def _patched_items(target: dict, updates: dict) -> Iterator[None]:
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
def _rewritten_call(obj: Any, method: str, rewrite: Callable[[dict], dict]) -> Iterator[None]:
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


class _PipelineProxy:
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
def _lmdeploy_pipeline(model: Any, fields: dict) -> Iterator[None]:
    pipe = model.model
    model.model = _PipelineProxy(pipe, fields)
    try:
        yield
    finally:
        model.model = pipe


def _as_text(raw: Any) -> str:
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
                f"{_describe(model)} has no dict attribute {self.settings_attr!r} holding its "
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
        return _patched_items(getattr(model, self.settings_attr), self.generation_kwargs(settings))

    def generate_one(self, model: Any, message: Any, dataset: str | None, settings: dict) -> str:
        with self.applied(model, settings):
            raw = model.generate(message=message, dataset=dataset)
        return _as_text(raw)

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


@register_adapter("InternVLChat")
class InternVLAdapter(SamplingAdapter):
    """InternVL (vlmeval/vlm/internvl/internvl_chat.py). ``generate_v2`` copies ``self.kwargs`` but
    then hard-codes temperature 0.6 / top_p 0.95 (its built-in BoN values), so the settings are
    applied where they reach the engine: the ``generation_config`` of ``self.model.chat``
    (transformers) or the GenerationConfig given to the lmdeploy pipeline."""

    name = "internvl"

    def check(self, model: Any, dataset: str | None = None) -> None:
        if getattr(model, "best_of_n", 1) > 1:
            raise UnsupportedPolicyError(
                f"{_describe(model)} was built with best_of_n={model.best_of_n}: it already runs "
                "VLMEvalKit's own Best-of-N and returns one winner per call; build it with best_of_n=1")
        inner = getattr(model, "model", None)
        if not getattr(model, "use_lmdeploy", False) and not callable(getattr(inner, "chat", None)):
            raise UnsupportedPolicyError(f"{_describe(model)}.model has no chat() to pass settings to")

    def applied(self, model: Any, settings: dict) -> contextlib.AbstractContextManager:
        fields = self.generation_kwargs(settings)
        if getattr(model, "use_lmdeploy", False):
            return _lmdeploy_pipeline(model, fields)

        def rewrite(kwargs: dict) -> dict:
            return {**kwargs, "generation_config": {**(kwargs.get("generation_config") or {}), **fields}}

        return _rewritten_call(model.model, "chat", rewrite)

    def enable_cot(self, model: Any) -> bool:
        """InternVL's CoT prompts are keyed on ``use_cot`` and on the USE_COT environment variable
        (read directly in build_prompt); VLMEvalKit's own BoN sets both the same way."""
        model.use_cot = True
        os.environ["USE_COT"] = "1"
        return True


@register_adapter("Qwen2VLChat")
class Qwen2VLAdapter(SamplingAdapter):
    """Qwen2/2.5-VL (vlmeval/vlm/qwen2_vl/model.py): transformers reads ``self.generate_kwargs``
    (VLMEvalKit default: top_k=1, i.e. greedy even with do_sample=True); the lmdeploy path builds
    a GenerationConfig without do_sample (greedy in lmdeploy); the vLLM path hard-codes
    temperature 0 and is refused."""

    name = "qwen2_vl"
    settings_attr = "generate_kwargs"

    def check(self, model: Any, dataset: str | None = None) -> None:
        if getattr(model, "use_vllm", False):
            raise UnsupportedPolicyError(
                f"{_describe(model)} with use_vllm=True hard-codes temperature=0 in generate_inner_vllm; "
                "use the transformers or lmdeploy backend for Best-of-N")
        if not getattr(model, "use_lmdeploy", False):
            super().check(model, dataset)

    def applied(self, model: Any, settings: dict) -> contextlib.AbstractContextManager:
        if getattr(model, "use_lmdeploy", False):
            return _lmdeploy_pipeline(model, self.generation_kwargs(settings))
        return super().applied(model, settings)


@register_adapter("LLaVA", "LLaVA_Next", "LLaVA_OneVision_1_5")
class LLaVAAdapter(SamplingAdapter):
    """LLaVA wrappers that pass ``**self.kwargs`` to ``model.generate`` (vlmeval/vlm/llava/llava.py)."""

    name = "llava"
    settings_attr = "kwargs"


@register_adapter("LLaVA_Next2", "LLaVA_OneVision", "LLaVA_OneVision_HF")
class LLaVAHardcodedAdapter(SamplingAdapter):
    """LLaVA wrappers that hard-code ``do_sample=False, temperature=0`` (or nothing, i.e. the
    checkpoint's defaults) in the call to ``self.model.generate``: the call's kwargs are rewritten."""

    name = "llava_hardcoded"

    def check(self, model: Any, dataset: str | None = None) -> None:
        if not callable(getattr(getattr(model, "model", None), "generate", None)):
            raise UnsupportedPolicyError(f"{_describe(model)}.model has no generate() to pass settings to")

    def applied(self, model: Any, settings: dict) -> contextlib.AbstractContextManager:
        fields = self.generation_kwargs(settings)
        return _rewritten_call(model.model, "generate", lambda kwargs: {**kwargs, **fields})


@register_adapter("MiniCPM_V", "MiniCPM_Llama3_V", "MiniCPM_V_2_6", "MiniCPM_o_2_6", "MiniCPM_V_4")
class MiniCPMAdapter(SamplingAdapter):
    """MiniCPM-V (vlmeval/vlm/minicpm_v.py): ``generate_inner`` lets ``self.kwargs`` override its
    defaults (beam search, ``sampling=False``) and the checkpoint's ``chat`` switches on the
    ``sampling`` flag, keeping only the sampling keys it knows (top_p, top_k, temperature, ...).
    The greedy candidate keeps the family's own deterministic decoding (beam search, 3 beams).
    MiniCPM_V_2_6 with use_lmdeploy hard-codes a near-greedy GenerationConfig: rewritten there."""

    name = "minicpm_v"
    settings_attr = "kwargs"
    flag = "sampling"  # the chat() argument that selects sampling

    def check(self, model: Any, dataset: str | None = None) -> None:
        if not getattr(model, "use_lmdeploy", False):
            super().check(model, dataset)

    def generation_kwargs(self, settings: dict) -> dict:
        out = {self.flag: settings["do_sample"]}
        if settings["do_sample"]:
            out["num_beams"] = 1
        out.update((k, v) for k, v in settings.items() if k != "do_sample" and v is not None)
        return out

    def applied(self, model: Any, settings: dict) -> contextlib.AbstractContextManager:
        if getattr(model, "use_lmdeploy", False):
            return _lmdeploy_pipeline(model, super().generation_kwargs(settings))
        return super().applied(model, settings)

    def enable_cot(self, model: Any) -> bool:
        """Newer MiniCPM wrappers choose CoT prompts (and longer outputs) per dataset with
        ``use_cot(dataset)``; this makes it true for every dataset."""
        if not callable(getattr(type(model), "use_cot", None)):
            return False
        model.use_cot = lambda dataset=None: True
        return True


@register_adapter("MiniCPM_o_4_5")
class MiniCPMo45Adapter(MiniCPMAdapter):
    """MiniCPM-o 4.5's chat takes ``do_sample`` instead of ``sampling``."""

    name = "minicpm_o_4_5"
    flag = "do_sample"


class _ChatAPIAdapter(SamplingAdapter):
    """OpenAI-style API wrappers (BaseAPI subclasses): settings go with each request.

    ``GPT4V.generate`` and ``LMDeployAPI.generate`` accept only ``(message, dataset)`` and drop
    other kwargs, so the request goes through ``BaseAPI.generate``, which merges per-call kwargs
    over ``default_kwargs`` and hands them to ``generate_inner`` (which puts them in the JSON
    payload). BaseAPI returns its fail message instead of raising: that becomes Sample.error.
    """

    top_k_off = None
    passes_dataset = True  # whether generate_inner takes ``dataset`` (else it would land in the payload)

    def settings(self, cfg: SamplingConfig, greedy: bool) -> dict:
        out = super().settings(cfg, greedy)
        if greedy:
            out["temperature"] = 0.0  # chat APIs have no do_sample switch
        return out

    def request_kwargs(self, settings: dict) -> dict:
        out = {}
        for key, name in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                          ("max_new_tokens", "max_tokens")):
            if settings[key] is not None:
                out[name] = settings[key]
        return out

    def sample(self, model: Any, message: Any, dataset: str | None, n: int, cfg: SamplingConfig,
               greedy_first: bool | None = None,
               on_sample: Callable[[int, Sample], None] | None = None) -> list[Sample]:
        """All sampled candidates in ONE request (``n``): the server prefills the prompt once.
        A server that refuses ``n`` or returns fewer choices gets one request per candidate from
        then on (remembered on the model, so ``--api-nproc`` threads stop asking)."""
        greedy_first = cfg.first_greedy if greedy_first is None else greedy_first
        n_sampled = n - int(bool(greedy_first))
        if n_sampled < 2 or getattr(model, "_vlmeval_prm_no_n", False) or not self.can_request_n(model):
            return super().sample(model, message, dataset, n, cfg, greedy_first, on_sample)
        self.check(model, dataset)
        settings = self.settings(cfg, greedy=False)
        try:
            texts = self.request_n(model, copy.deepcopy(message), dataset, n_sampled, settings)
        except NotImplementedError as exc:
            model._vlmeval_prm_no_n = True
            log.warning("%s: server does not honour n=%d (%s); one request per candidate from now on",
                           _describe(model), n_sampled, exc)
            return super().sample(model, message, dataset, n, cfg, greedy_first, on_sample)
        except Exception as exc:  # the one request failed: every candidate it carried failed
            texts = [exc] * n_sampled
        out = super().sample(model, message, dataset, 1, cfg, True) if greedy_first else []
        for t in texts:
            if isinstance(t, Exception):
                out.append(Sample(text=None, error=f"{type(t).__name__}: {t}", settings=settings))
            else:
                out.append(Sample(text=t, error=None, settings=settings))
        return out

    def can_request_n(self, model: Any) -> bool:
        return bool(getattr(model, "api_base", None)) and not getattr(model, "use_azure", False)

    def payload(self, model: Any, inputs: list[dict], dataset: str | None, kwargs: dict) -> dict:
        """The chat-completions JSON the wrapper itself would send, with ``kwargs`` merged in."""
        kwargs = {"max_tokens": model.max_tokens, **model.default_kwargs, **kwargs}
        return {"model": model.model, "messages": model.prepare_inputs(inputs), **kwargs}

    def request_n(self, model: Any, message: Any, dataset: str | None, n: int, settings: dict) -> list:
        """One chat completion with ``n`` choices; raises NotImplementedError when ``n`` is refused."""
        import requests  # what VLMEvalKit's API wrappers use, so proxies and TLS behave the same

        inputs = model.preproc_content(message)
        payload = self.payload(model, inputs, dataset, {**self.request_kwargs(settings), "n": n})
        headers = {"Authorization": f"Bearer {model.key}"} if getattr(model, "key", None) else {}
        resp = requests.post(model.api_base, json=payload, headers=headers, timeout=getattr(model, "timeout", 600))
        if resp.status_code in (400, 422):  # e.g. "n must be 1"; single requests report their own errors
            raise NotImplementedError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        resp.raise_for_status()
        choices = resp.json().get("choices") or []
        if len(choices) != n:
            raise NotImplementedError(f"asked for {n} choices, got {len(choices)}")
        out = []
        for choice in choices:
            content = ((choice.get("message") or {}).get("content") or "").strip()
            out.append(content if content else ValueError("empty response"))
        return out

    def generate_one(self, model: Any, message: Any, dataset: str | None, settings: dict) -> str:
        from vlmeval.api.base import BaseAPI  # the model is a vlmeval object: already imported

        kwargs = self.request_kwargs(settings)
        if self.passes_dataset:
            kwargs["dataset"] = dataset
        text = _as_text(BaseAPI.generate(model, message, **kwargs))
        fail_msg = getattr(model, "fail_msg", None)
        if fail_msg and fail_msg in text:
            raise RuntimeError(text)
        return text


@register_adapter("OpenAIWrapper")
class OpenAIAdapter(_ChatAPIAdapter):
    """OpenAIWrapper / GPT4V / CustomAPIModel (vlmeval/api/gpt.py)."""

    name = "openai"
    passes_dataset = False

    def check(self, model: Any, dataset: str | None = None) -> None:
        if getattr(model, "is_max_completion_tokens", False):
            raise UnsupportedPolicyError(
                f"{_describe(model)} (model {getattr(model, 'model', '?')!r}) drops temperature from "
                "its requests (o-series / gpt-5 models), so the requested temperature cannot apply")


@register_adapter("OpenAISDKWrapper")
class OpenAISDKAdapter(_ChatAPIAdapter):
    """OpenAISDKWrapper subclasses: LMDeployWrapper / LMDeployAPI (vlmeval/api/lmdeploy.py). Not
    ARM_thinker: it derives from a different class that is also named LMDeployWrapper."""

    name = "openai_sdk"

    def payload(self, model: Any, inputs: list[dict], dataset: str | None, kwargs: dict) -> dict:
        system_prompt, adapter = model.system_prompt, model.adapter
        kwargs = {**model.default_kwargs, **kwargs}
        if adapter is not None:  # the same steps as OpenAISDKWrapper.generate_inner
            args = adapter.override_model_args(dataset, dict(kwargs))
            system_prompt = args.pop("system_prompt", system_prompt)
            kwargs = {**kwargs, **args}
            inputs = adapter.process_inputs(inputs, dataset)
        payload = {"model": model.model, "messages": model.prepare_inputs(inputs, system_prompt), **kwargs}
        return adapter.process_payload(payload, dataset=dataset) if adapter is not None else payload

    def check(self, model: Any, dataset: str | None = None) -> None:
        adapter = getattr(model, "adapter", None)
        if adapter is None or dataset is None:
            return
        probe = {"temperature": 0.7, "top_p": 0.95}
        forced = {k: v for k, v in adapter.override_model_args(dataset, dict(probe)).items() if k in probe}
        if forced:
            raise UnsupportedPolicyError(
                f"{_describe(model)}: its prompt adapter {type(adapter).__name__} forces {forced} "
                f"for dataset {dataset!r}, which would override the sampling settings")
