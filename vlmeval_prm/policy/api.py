"""Sampling adapters for VLMEvalKit's OpenAI-compatible API wrappers: settings go with each request,
and N sampled candidates go out as ONE chat request with ``n=N`` where the server honours it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import httpx

from vlmeval_prm.logs import get_logger
from vlmeval_prm.policy.base import (
    Sample,
    SamplingAdapter,
    SamplingConfig,
    UnsupportedPolicyError,
    as_text,
    describe,
    register_adapter,
)

log = get_logger(__name__)

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
                           describe(model), n_sampled, exc)
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
        inputs = model.preproc_content(message)
        payload = self.payload(model, inputs, dataset, {**self.request_kwargs(settings), "n": n})
        headers = {"Authorization": f"Bearer {model.key}"} if getattr(model, "key", None) else {}
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

    def generate_one(self, model: Any, message: Any, dataset: str | None, settings: dict) -> str:
        from vlmeval.api.base import BaseAPI  # the model is a vlmeval object: already imported

        kwargs = self.request_kwargs(settings)
        if self.passes_dataset:
            kwargs["dataset"] = dataset
        text = as_text(BaseAPI.generate(model, message, **kwargs))
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
                f"{describe(model)} (model {getattr(model, 'model', '?')!r}) drops temperature from "
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
                f"{describe(model)}: its prompt adapter {type(adapter).__name__} forces {forced} "
                f"for dataset {dataset!r}, which would override the sampling settings")
