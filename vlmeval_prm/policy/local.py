"""Sampling adapters for VLMEvalKit's local model families (InternVL, Qwen2-VL, LLaVA, MiniCPM-V).

Each adapter knows where one family keeps its generation settings and switches them to sampling
for one call, restoring them afterwards (VLMEvalKit runs a local model one call at a time).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from vlmeval_prm.policy.base import (
    SamplingAdapter,
    UnsupportedPolicyError,
    describe,
    lmdeploy_pipeline,
    register_adapter,
    rewritten_call,
)


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
                f"{describe(model)} was built with best_of_n={model.best_of_n}: it already runs "
                "VLMEvalKit's own Best-of-N and returns one winner per call; build it with best_of_n=1")
        inner = getattr(model, "model", None)
        if not getattr(model, "use_lmdeploy", False) and not callable(getattr(inner, "chat", None)):
            raise UnsupportedPolicyError(f"{describe(model)}.model has no chat() to pass settings to")

    def applied(self, model: Any, settings: dict) -> contextlib.AbstractContextManager:
        fields = self.generation_kwargs(settings)
        if getattr(model, "use_lmdeploy", False):
            return lmdeploy_pipeline(model, fields)

        def rewrite(kwargs: dict) -> dict:
            return {**kwargs, "generation_config": {**(kwargs.get("generation_config") or {}), **fields}}

        return rewritten_call(model.model, "chat", rewrite)

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
                f"{describe(model)} with use_vllm=True hard-codes temperature=0 in generate_inner_vllm; "
                "use the transformers or lmdeploy backend for Best-of-N")
        if not getattr(model, "use_lmdeploy", False):
            super().check(model, dataset)

    def applied(self, model: Any, settings: dict) -> contextlib.AbstractContextManager:
        if getattr(model, "use_lmdeploy", False):
            return lmdeploy_pipeline(model, self.generation_kwargs(settings))
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
            raise UnsupportedPolicyError(f"{describe(model)}.model has no generate() to pass settings to")

    def applied(self, model: Any, settings: dict) -> contextlib.AbstractContextManager:
        fields = self.generation_kwargs(settings)
        return rewritten_call(model.model, "generate", lambda kwargs: {**kwargs, **fields})


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
            return lmdeploy_pipeline(model, super().generation_kwargs(settings))
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
