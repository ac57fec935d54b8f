"""Sampling adapters for VLMEvalKit's API wrappers (``BaseAPI`` subclasses, vlmeval/api/).

Settings go with each request and nothing on the shared model changes (``--api-nproc`` threads use
it at once), except for the few wrappers that read settings only from their own attributes (those
are switched under a per-model lock). Routes:

- ``api-n``: OpenAI-compatible servers get ONE chat request with ``n=N``; a server that refuses
  ``n`` gets N parallel requests from then on;
- ``api-parallel``: N concurrent requests through ``BaseAPI.generate``, which merges per-call kwargs
  over ``default_kwargs`` and hands them to ``generate_inner`` (each wrapper forwards only some of
  them: ``sends`` lists which, read from its vlmeval/api source);
- ``unsupported``: the wrapper hard-codes greedy decoding or sends no settings at all.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import httpx

from vlmeval_prm.counters import bump
from vlmeval_prm.logs import get_logger
from vlmeval_prm.policy.base import (
    ModelSpec,
    Route,
    Sample,
    SamplingAdapter,
    SamplingConfig,
    UnsupportedPolicyError,
    as_text,
    attr,
    describe,
    failed,
    patched_attrs,
    patched_items,
    register_adapter,
)

log = get_logger(__name__)

#: Neutral setting -> request keyword of an OpenAI-style chat completion.
OPENAI_SENDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "max_new_tokens": "max_tokens"}


def _generate_kwargs_reach_inner(cls: type) -> bool:
    """VLMEvalKit calls ``model.generate(message=..., dataset=...)``. Wrappers that keep
    ``BaseAPI.generate`` hand ``dataset`` on to ``generate_inner``; those that override ``generate``
    drop it (and reject other kwargs). The adapter sends ``dataset`` exactly when VLMEvalKit would."""
    for klass in cls.__mro__:
        if "generate" in vars(klass):
            return klass.__name__ == "BaseAPI"
    return False


@register_adapter("BaseAPI")
class APIAdapter(SamplingAdapter):
    """N concurrent requests through ``BaseAPI.generate`` with the settings the wrapper forwards.
    Registered for ``BaseAPI`` itself with nothing in ``sends``: an API class nobody has checked is
    reported unsupported, never sampled with settings it might drop."""

    name = "api"
    top_k_off = None
    #: Neutral setting -> the kwarg name the wrapper's ``generate_inner`` forwards to its server.
    sends: dict[str, str] = {}
    #: Said in the route reason (e.g. which requested settings cannot be sent).
    note = ""
    #: Why the class cannot sample (unsupported when set).
    refusal = (
        "no sampling adapter: nobody has checked that its generate_inner forwards per-call "
        "temperature/top_p to its server"
    )
    #: Concurrent requests per question.
    parallel = 8

    def route(self, model: Any) -> Route:
        if not self.sends:
            return Route("unsupported", f"{self.name}: {self.refusal}")
        note = f"; {self.note}" if self.note else ""
        return Route(
            "api-parallel", f"{self.name}: N concurrent requests sending {', '.join(self.sends.values())}{note}"
        )

    def settings(self, cfg: SamplingConfig, greedy: bool) -> dict:
        out = super().settings(cfg, greedy)
        if greedy:
            out["temperature"] = 0.0  # chat APIs have no do_sample switch
        # what the wrapper cannot send is left to the server: recorded as None
        return {k: (v if k == "do_sample" or k in self.sends else None) for k, v in out.items()}

    def request_kwargs(self, settings: dict) -> dict:
        return {name: settings[key] for key, name in self.sends.items() if settings.get(key) is not None}

    def applied(self, model: Any, settings: dict) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def generate_one(self, model: Any, message: Any, dataset: str | None, settings: dict) -> str:
        from vlmeval.api.base import BaseAPI  # the model is a vlmeval object: already imported

        kwargs = self.request_kwargs(settings)
        if _generate_kwargs_reach_inner(type(model)):
            kwargs["dataset"] = dataset
        bump("policy_api_requests")
        text = as_text(BaseAPI.generate(model, message, **kwargs))
        fail_msg = getattr(model, "fail_msg", None)
        if fail_msg and fail_msg in text:
            raise RuntimeError(text)
        return text

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
        """N requests at once (at most ``parallel``); ``on_sample`` is called from this thread as
        each one completes."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.check(model, dataset)
        greedy_first = cfg.first_greedy if greedy_first is None else greedy_first
        plan = [self.settings(cfg, greedy=greedy_first and i == 0) for i in range(n)]
        out: list[Sample | None] = [None] * n

        def one(i: int) -> Sample:
            try:
                return Sample(self.generate_one(model, copy.deepcopy(message), dataset, plan[i]), None, plan[i])
            except Exception as exc:  # one candidate's failure must not cost the others
                return failed(exc, plan[i])

        with self.applied_all(model, plan), ThreadPoolExecutor(max_workers=max(1, min(n, self.parallel))) as pool:
            futures = {pool.submit(one, i): i for i in range(n)}
            for fut in as_completed(futures):
                i = futures[fut]
                out[i] = fut.result()
                if on_sample is not None:
                    on_sample(i, out[i])
        return out  # type: ignore[return-value]

    def applied_all(self, model: Any, plan: list[dict]) -> contextlib.AbstractContextManager:
        """State held while the requests of one question are in flight (none: settings go per request)."""
        return contextlib.nullcontext()


# -- OpenAI-compatible: one request with n --------------------------------------------------------


class _ChatAPIAdapter(APIAdapter):
    """OpenAI-style API wrappers: all sampled candidates in ONE request (``n``), so the server
    prefills the prompt once. ``GPT4V.generate`` and ``LMDeployAPI.generate`` accept only
    ``(message, dataset)``; single requests go through ``BaseAPI.generate`` (see APIAdapter)."""

    sends = OPENAI_SENDS

    def route(self, model: Any) -> Route:
        if not self.can_request_n(model):
            return Route("api-parallel", f"{self.name}: N concurrent requests (no plain api_base to send n to)")
        return Route("api-n", f"{self.name}: one chat request with n=N (N parallel requests if the server refuses n)")

    def can_request_n(self, model: Any) -> bool:
        return not attr(model, "use_azure", False)

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
        """A server that refuses ``n`` or returns fewer choices gets one request per candidate from
        then on (remembered on the model, so ``--api-nproc`` threads stop asking)."""
        greedy_first = cfg.first_greedy if greedy_first is None else greedy_first
        greedy_first = greedy_first and self.can_be_greedy(model)
        n_sampled = n - int(bool(greedy_first))
        if (
            n_sampled < 2
            or getattr(model, "_vlmeval_prm_no_n", False)
            or not self.can_request_n(model)
            or not getattr(model, "api_base", None)
        ):
            return super().sample(model, message, dataset, n, cfg, greedy_first, on_sample)
        self.check(model, dataset)
        settings = self.settings(cfg, greedy=False)
        try:
            texts = self.request_n(model, copy.deepcopy(message), dataset, n_sampled, settings)
        except NotImplementedError as exc:
            model._vlmeval_prm_no_n = True
            log.warning(
                "%s: server does not honour n=%d (%s); parallel requests from now on", describe(model), n_sampled, exc
            )
            return super().sample(model, message, dataset, n, cfg, greedy_first, on_sample)
        except Exception as exc:  # the one request failed: every candidate it carried failed
            texts = [exc] * n_sampled
        out = super().sample(model, message, dataset, 1, cfg, True) if greedy_first else []
        for t in texts:
            out.append(failed(t, settings) if isinstance(t, Exception) else Sample(t, None, settings))
        return out

    def can_be_greedy(self, model: Any) -> bool:
        return True

    def payload(self, model: Any, inputs: list[dict], dataset: str | None, kwargs: dict) -> dict:
        """The chat-completions JSON the wrapper itself would send, with ``kwargs`` merged in."""
        kwargs = {"max_tokens": model.max_tokens, **model.default_kwargs, **kwargs}
        return {"model": model.model, "messages": model.prepare_inputs(inputs), **kwargs}

    def request_n(self, model: Any, message: Any, dataset: str | None, n: int, settings: dict) -> list:
        """One chat completion with ``n`` choices; raises NotImplementedError when ``n`` is refused."""
        inputs = model.preproc_content(message)
        payload = self.payload(model, inputs, dataset, {**self.request_kwargs(settings), "n": n})
        headers = {"Authorization": f"Bearer {model.key}"} if getattr(model, "key", None) else {}
        bump("policy_api_requests")
        resp = httpx.post(model.api_base, json=payload, headers=headers, timeout=getattr(model, "timeout", 600))
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


def _drops_temperature(model: Any) -> bool:
    """GPT4V's own test (vlmeval/api/gpt.py, ``is_max_completion_tokens``): o-series and gpt-5
    requests carry no temperature (those models sample at their fixed temperature 1)."""
    if not isinstance(model, ModelSpec) and hasattr(model, "is_max_completion_tokens"):
        return bool(model.is_max_completion_tokens)
    name = str(attr(model, "model", ""))
    return any(tag in name for tag in ("o1", "o3", "o4", "gpt-5"))


@register_adapter("OpenAIWrapper")
class OpenAIAdapter(_ChatAPIAdapter):
    """OpenAIWrapper / GPT4V / CustomAPIModel (vlmeval/api/gpt.py). The o-series and gpt-5 take no
    temperature or top_p: their candidates differ because those models always sample (at
    temperature 1); they are drawn with n=N like the others, and no candidate can be greedy."""

    name = "openai"

    def route(self, model: Any) -> Route:
        route = super().route(model)
        if not _drops_temperature(model):
            return route
        return Route(
            route.route,
            f"{route.reason}; model {attr(model, 'model', '?')!r} takes no temperature/top_p "
            "(o-series/gpt-5 sample at their fixed temperature 1), so candidates use the "
            "model's own sampling and none is greedy",
        )

    def can_be_greedy(self, model: Any) -> bool:
        return not _drops_temperature(model)

    def sample(self, model, message, dataset, n, cfg, greedy_first=None, on_sample=None):
        if not _drops_temperature(model):
            return super().sample(model, message, dataset, n, cfg, greedy_first, on_sample)
        if greedy_first or (greedy_first is None and cfg.first_greedy):
            log.warning(
                "%s: %r cannot decode greedily; candidate 0 is sampled like the others",
                describe(model),
                getattr(model, "model", "?"),
            )
        return _FixedSamplingAdapter().sample(model, message, dataset, n, cfg, False, on_sample)

    def payload(self, model, inputs, dataset, kwargs):
        payload = super().payload(model, inputs, dataset, kwargs)
        if getattr(model, "is_max_completion_tokens", False):  # as GPT4V.generate_inner builds it
            payload["max_completion_tokens"] = payload.pop("max_tokens")
            payload.pop("temperature", None)
            payload.pop("top_p", None)
        return payload


class _FixedSamplingAdapter(OpenAIAdapter):
    """For models that take no temperature/top_p: what each candidate got is the model's own sampling."""

    def sample(self, model, message, dataset, n, cfg, greedy_first=None, on_sample=None):
        return _ChatAPIAdapter.sample(self, model, message, dataset, n, cfg, False, on_sample)

    def settings(self, cfg: SamplingConfig, greedy: bool) -> dict:
        return {**super().settings(cfg, False), "do_sample": True, "temperature": None, "top_p": None, "top_k": None}


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
        super().check(model, dataset)
        adapter = getattr(model, "adapter", None)
        if adapter is None or dataset is None:
            return
        probe = {"temperature": 0.7, "top_p": 0.95}
        forced = {k: v for k, v in adapter.override_model_args(dataset, dict(probe)).items() if k in probe}
        if forced:
            raise UnsupportedPolicyError(
                f"{describe(model)}: its prompt adapter {type(adapter).__name__} forces {forced} "
                f"for dataset {dataset!r}, which would override the sampling settings"
            )


# -- per-call wrappers: N parallel requests ------------------------------------------------------

T, P, K, M = "temperature", "top_p", "top_k", "max_new_tokens"

#: class name -> (neutral setting -> kwarg its generate_inner forwards, note). Read from vlmeval/api/*.py.
PER_CALL: dict[str, tuple[dict[str, str], str]] = {
    "Claude_Wrapper": (
        {T: "temperature", K: "top_k", M: "max_tokens"},
        "top_p not sent: recent Claude models reject temperature together with top_p",
    ),
    "GeminiWrapper": ({T: "temperature", P: "top_p", K: "top_k", M: "max_output_tokens"}, ""),
    "GCPVertexAPI": ({T: "temperature", M: "max_tokens"}, "the wrapper forwards no top_p/top_k"),
    "TogetherAPI": ({T: "temperature", M: "max_tokens"}, "the wrapper forwards no top_p/top_k"),
    "DoubaoVLWrapper": ({T: "temperature", M: "max_tokens"}, "the wrapper forwards no top_p/top_k"),
    "BedrockAPI": ({T: "temperature", M: "max_tokens"}, "the wrapper forwards no top_p/top_k"),
    "MiniMaxAPI": ({T: "temperature", M: "max_tokens"}, "the wrapper forwards no top_p/top_k"),
    "KimiVLAPIWrapper": ({T: "temperature", P: "top_p", M: "max_tokens"}, ""),
    "CWWrapper": ({T: "temperature", P: "top_p", M: "max_tokens"}, ""),
    "TaiyiWrapper": ({T: "temperature", P: "top_p"}, ""),
    "SiliconFlowAPI": ({T: "temperature", P: "top_p", M: "max_tokens"}, ""),
    "SenseChatVisionV2API": ({T: "temperature", P: "top_p", M: "max_tokens"}, ""),
    "Qwen2VLAPI": (
        {T: "temperature", P: "top_p", K: "top_k", M: "max_tokens"},
        "top_k sent as None when unset, which turns off the wrapper's top_k=1",
    ),
}

#: class name -> (neutral setting -> attribute its generate_inner reads, note); switched under a lock.
BY_ATTRIBUTE: dict[str, tuple[dict[str, str], str]] = {
    "StepAPI_INT": ({T: "temperature", M: "max_tokens"}, ""),
    "QwenAPI": ({T: "temperature", M: "max_tokens"}, ""),
    "BlueLMWrapper": ({T: "temperature", P: "top_p", K: "top_k", M: "max_tokens"}, ""),
    "JTVLChatWrapper": ({T: "temperature", M: "max_tokens"}, ""),
    "VideoChatOnlineV2Wrapper": ({T: "temperature", M: "max_tokens"}, ""),
}

#: class name -> why it cannot sample (from its generate_inner).
REFUSED: dict[str, str] = {
    "GLMVisionWrapper": "generate_inner hard-codes do_sample=False",
    "bailingMMWrapper": "generate_inner sends no generation settings",
    "QwenVLWrapper": "generate_inner builds a gen_config but never sends it",
    "SenseChatVisionWrapper": "generate_inner sends no temperature or top_p",
    "HunyuanWrapper": "generate_inner hard-codes TopK=1 (greedy)",
    "MUGUWrapper": "generate_inner hard-codes top_k=1 (greedy)",
    "TaichuVLWrapper": "generate_inner hard-codes temperature 0",
    "TaichuVLRWrapper": "generate_inner hard-codes temperature 0",
    "TeleMM2_Wrapper": "generate_inner picks temperature 0 or 0.6 by dataset, ignoring per-call settings",
    "TeleMM2Thinking_Wrapper": "generate_inner picks temperature 0 or 0.6 by dataset, ignoring per-call settings",
    "RBdashMMChat3Wrapper": "generate_inner hard-codes do_sample=False",
    "RBdashMMChat3_5_Wrapper": "generate_inner hard-codes do_sample=False",
    "RBdashMMChat3_78B_Wrapper": "generate_inner hard-codes do_sample=False",
    "RBdashMMChat3_5_38B_Wrapper": "generate_inner hard-codes do_sample=False",
    "ARM_thinker": "its generate_inner (vlmeval/api/arm_thinker.py) runs an agent loop with its own settings",
}


class AttributeAPIAdapter(APIAdapter):
    """Wrappers whose generate_inner reads its settings from the instance (``self.temperature``):
    the attributes are switched while one question's requests are in flight, under a per-model lock
    (other questions wait), and put back. A greedy candidate 0 goes alone first."""

    _locks: dict[int, threading.Lock] = {}
    _locks_guard = threading.Lock()

    def route(self, model: Any) -> Route:
        route = super().route(model)
        return Route(route.route, f"{route.reason} (set as attributes, one question at a time)")

    def request_kwargs(self, settings: dict) -> dict:
        return {}

    def lock(self, model: Any) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(id(model), threading.Lock())

    def sample(self, model, message, dataset, n, cfg, greedy_first=None, on_sample=None):
        greedy_first = cfg.first_greedy if greedy_first is None else greedy_first
        out: list[Sample] = []
        with self.lock(model):
            if greedy_first:
                out += super().sample(model, message, dataset, 1, cfg, True, on_sample)
            if n > len(out):
                k = len(out)
                shifted = None if on_sample is None else (lambda i, s: on_sample(i + k, s))
                out += super().sample(model, message, dataset, n - k, cfg, False, shifted)
        return out

    def applied_all(self, model, plan):
        values = {name: plan[0][key] for key, name in self.sends.items() if plan[0].get(key) is not None}
        return patched_attrs(model, values)


@register_adapter("Reka_Wrapper")
class RekaAdapter(AttributeAPIAdapter):
    """Reka (vlmeval/api/reka.py) passes ``**self.kwargs`` (temperature, request_output_len)."""

    name = "Reka_Wrapper"
    sends = {T: "temperature", M: "request_output_len"}

    def applied_all(self, model, plan):
        values = {name: plan[0][key] for key, name in self.sends.items() if plan[0].get(key) is not None}
        return patched_items(model.kwargs, values)


@register_adapter("Qwen2VLAPI")
class Qwen2VLAPIAdapter(APIAdapter):
    """Qwen2VLAPI (vlmeval/api/qwen_vl_api.py) merges per-call kwargs over ``generate_kwargs``, whose
    default ``top_k=1`` is greedy: an unset top_k is sent as None (DashScope: no top-k cut-off)."""

    name = "Qwen2VLAPI"
    sends, note = PER_CALL["Qwen2VLAPI"]

    def request_kwargs(self, settings):
        out = super().request_kwargs(settings)
        if settings["do_sample"]:
            out["top_k"] = settings["top_k"]
        return out


@register_adapter("GeminiWrapper")
class GeminiAdapter(APIAdapter):
    """Gemini (vlmeval/api/gemini.py): the genai backend merges per-call kwargs into its
    GenerateContentConfig; the vertex backend sends none."""

    name = "GeminiWrapper"
    sends, note = PER_CALL["GeminiWrapper"]

    def route(self, model: Any) -> Route:
        backend = attr(model, "backend", "genai")
        if backend != "genai":
            return Route("unsupported", f"{self.name}: the {backend!r} backend sends no per-call settings")
        return super().route(model)


def _register_tables() -> None:
    for table, base in ((PER_CALL, APIAdapter), (BY_ATTRIBUTE, AttributeAPIAdapter)):
        for cls_name, (sends, note) in table.items():
            if cls_name not in ("Qwen2VLAPI", "GeminiWrapper"):
                register_adapter(cls_name)(
                    type(
                        f"{cls_name}Adapter",
                        (base,),
                        {
                            "name": cls_name,
                            "sends": sends,
                            "note": note,
                            "__doc__": f"{cls_name}: {note or 'per call'}",
                        },
                    )
                )
    for cls_name, why in REFUSED.items():
        register_adapter(cls_name)(
            type(
                f"{cls_name}Refused", (APIAdapter,), {"name": cls_name, "refusal": why, "__doc__": f"{cls_name}: {why}"}
            )
        )


_register_tables()
