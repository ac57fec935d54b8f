"""Sampling adapters for VLMEvalKit's local model classes.

Every local class samples through the engine call its ``generate_inner`` makes (see ``engines``):
the sampling settings are merged into that call, so it does not matter where a family keeps its
settings or whether it hard-codes them. Families checked to make exactly ONE engine call per answer
(and to decode row 0 of its output) are ``batched``: the N candidates of a question come from one
engine call (``num_return_sequences=N``, vLLM ``SamplingParams(n=N)``, one lmdeploy batch), split by
``SamplingConfig.batch_size``. Every other local class gets the generic route: N calls, each with the
sampling settings merged into whatever transformers ``generate`` the model reaches.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import os
import re
import sys
from typing import Any

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
    model_class,
    patched_attrs,
    patched_items,
    register_adapter,
    registered_names,
)
from vlmeval_prm.policy.code import FOREIGN_DECODING, engine_calls
from vlmeval_prm.policy.engines import (
    HFGenerate,
    Interceptor,
    PipelineCall,
    VLLMGenerate,
    generate_targets,
    hf_intercepted,
    pipeline_intercepted,
    vllm_intercepted,
)

SEQUENTIAL_WORDS = {
    "transformers": "every transformers generate() the model reaches",
    "vllm": "the SamplingParams of each vLLM generate call",
    "lmdeploy": "the GenerationConfig of each lmdeploy pipeline call",
}
ENGINE_WORDS = {
    "transformers": "one transformers generate call with num_return_sequences=N",
    "vllm": "one vLLM generate call with SamplingParams(n=N)",
    "lmdeploy": "one lmdeploy pipeline call with the prompt batched N times",
}


@register_adapter("BaseModel", "InternS1Chat")
class EngineAdapter(SamplingAdapter):
    """Generic route for any local class: the sampling settings are merged into every transformers
    ``generate`` the model reaches (its own model, or the language model inside a remote-code
    ``chat``), one call per candidate. A candidate whose call never reached such a ``generate``
    fails with an error rather than being a greedy answer in disguise."""

    name = "generic"
    #: Families checked to make exactly one engine call per answer and decode its first row.
    batched = False
    #: Engines this family can run on, keyed by the flag attribute that selects them.
    engines: dict[str, str | None] = {"transformers": None}
    vllm_attr, pipeline_attr = "llm", "model"

    # -- route -----------------------------------------------------------------------------------
    @classmethod
    def fits_code(cls, klass: type) -> str | None:
        """A family route (batched: one engine call per answer, row 0 decoded) holds for the code it
        was checked against only; the generic route relies on nothing class-specific."""
        if cls.name == "generic":
            return None
        return f"{cls.name} was checked against the code of {', '.join(registered_names(cls))} only"

    def engine(self, model: Any) -> str:
        for engine, flag in self.engines.items():
            if flag is not None and attr(model, flag, False):
                return engine
        for flag in ("use_vllm", "use_lmdeploy"):
            if attr(model, flag, False):
                return flag[4:] + "?"  # a backend this family's adapter does not know
        return "transformers"

    def route(self, model: Any) -> Route:
        engine = self.engine(model)
        if engine.endswith("?"):
            return Route(
                "unsupported",
                f"{self.name}: the {engine[:-1]} backend of {model_class(model).__name__} "
                "is not covered (use its transformers backend)",
            )
        if isinstance(model, ModelSpec) and not self.batched and not _calls_an_engine(model.cls):
            return Route(
                "unsupported",
                f"{self.name}: {model.cls.__name__} never calls a generate or chat "
                "method, so sampling settings have nowhere to go",
            )
        calls = engine_calls(model_class(model))
        if engine == "transformers" and calls and all(c.foreign for c in calls):
            c = calls[0]
            return Route(
                "unsupported",
                f"{self.name}: {c.describe()} passes {c.foreign}=, so it is the model's own generate, not "
                f"transformers' (which takes {FOREIGN_DECODING[c.foreign]}): sampling settings have nowhere to go",
            )
        if self.batched:
            return Route("batched", f"{self.name}: N candidates from {ENGINE_WORDS[engine]}")
        return Route(
            "sequential",
            f"{self.name}: N calls, sampling settings merged into {SEQUENTIAL_WORDS[engine]}"
            f"{'' if self.name != 'generic' else ' (a call that reaches none fails loudly)'}",
        )

    def check(self, model: Any, dataset: str | None = None) -> None:
        route = self.route(model)
        if not route.can_sample:
            raise UnsupportedPolicyError(f"{describe(model)}: {route.reason}")
        engine = self.engine(model)
        if engine == "transformers" and not generate_targets(model):
            raise UnsupportedPolicyError(
                f"{describe(model)} holds no transformers model with generate(), so the "
                f"{self.name} route cannot pass sampling settings to it"
            )
        if engine == "vllm" and not callable(getattr(getattr(model, self.vllm_attr, None), "generate", None)):
            raise UnsupportedPolicyError(f"{describe(model)}.{self.vllm_attr} is not a vLLM LLM")
        if engine == "lmdeploy" and not callable(getattr(model, self.pipeline_attr, None)):
            raise UnsupportedPolicyError(f"{describe(model)}.{self.pipeline_attr} is not an lmdeploy pipeline")

    # -- settings in each engine's vocabulary ----------------------------------------------------
    def engine_fields(self, engine: str, settings: dict) -> dict:
        limit = settings["max_new_tokens"]
        if engine == "vllm":
            out = (
                {"temperature": 0.0}
                if not settings["do_sample"]
                else {
                    "temperature": settings["temperature"],
                    "top_p": settings["top_p"],
                    "top_k": -1 if not settings["top_k"] else settings["top_k"],
                    "seed": None,
                }
            )
            return {**out, "max_tokens": limit} if limit else out
        out = {"do_sample": settings["do_sample"]}
        if settings["do_sample"]:
            out.update(temperature=settings["temperature"], top_p=settings["top_p"], top_k=settings["top_k"])
            out.update({"num_beams": 1} if engine == "transformers" else {"random_seed": None})
        if limit:
            out["max_new_tokens"] = limit
        return out

    def intercept(
        self, model: Any, settings: dict, batch: int
    ) -> tuple[Interceptor, contextlib.AbstractContextManager]:
        engine, label = self.engine(model), type(model).__name__
        fields = self.engine_fields(engine, settings)
        if engine == "vllm":
            icpt = VLLMGenerate(fields, batch, label)
            return icpt, vllm_intercepted(getattr(model, self.vllm_attr), icpt)
        if engine == "lmdeploy":
            icpt = PipelineCall(fields, batch, label)
            return icpt, pipeline_intercepted(model, icpt, self.pipeline_attr)
        icpt = HFGenerate(fields, batch, label)
        return icpt, hf_intercepted(generate_targets(model), icpt)

    # -- sampling --------------------------------------------------------------------------------
    def plan(self, n: int, cfg: SamplingConfig, greedy_first: bool) -> list[tuple[int, dict]]:
        """(candidates, settings) per engine call."""
        plan = [(1, self.settings(cfg, greedy=True))] if greedy_first else []
        rest = n - len(plan)
        step = (cfg.batch_size or rest) if self.batched else 1
        sampled = self.settings(cfg, greedy=False)
        plan += [(min(step, rest - k), sampled) for k in range(0, rest, max(step, 1))]
        return plan

    def sample(self, model, message, dataset, n, cfg: SamplingConfig, greedy_first=None, on_sample=None):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.check(model, dataset)
        greedy_first = cfg.first_greedy if greedy_first is None else greedy_first
        out: list[Sample] = []
        with self.scope(model), self.raw_text(model):
            for count, settings in self.plan(n, cfg, greedy_first):
                for sample in self.run_batch(model, message, dataset, count, settings):
                    out.append(sample)
                    if on_sample is not None:
                        on_sample(len(out) - 1, sample)
        return out

    def run_batch(self, model: Any, message: Any, dataset: str | None, count: int, settings: dict) -> list[Sample]:
        """``count`` candidates from one engine call: the wrapper runs ``count`` times (its own
        prompt building and decoding), the engine once. When the engine call itself fails, every
        candidate of the batch carries that failure."""
        icpt, installed = self.intercept(model, settings, count)
        out: list[Sample] = []
        with installed:
            for _ in range(count):
                icpt.reset_calls()
                try:
                    text = as_text(model.generate(message=copy.deepcopy(message), dataset=dataset))
                    if icpt.calls == 0:
                        raise UnsupportedPolicyError(
                            f"{describe(model)} answered without calling a transformers generate(), so the "
                            "sampling settings did not apply"
                        )
                    if count > 1 and icpt.calls != 1:
                        raise RuntimeError(
                            f"{describe(model)} made {icpt.calls} engine calls for one answer; "
                            "batched sampling needs exactly one"
                        )
                except Exception as exc:
                    if icpt.real_calls == 0 or (count > 1 and not out):
                        return [failed(exc, settings) for _ in range(count)]
                    out.append(failed(exc, settings))
                else:
                    out.append(Sample(text=text, error=None, settings=settings))
        return out


#: Calls through which a wrapper reaches a transformers ``generate`` (a remote-code ``chat`` or
#: Molmo's ``generate_from_batch`` call it inside).
ENGINE_CALL = re.compile(r"\.(generate|generate_from_batch|chat)\(")


def _calls_an_engine(cls: type) -> bool:
    """Whether the class, a VLMEvalKit base it inherits from, or a plain function of their modules
    (e.g. xcomposer2's ``model_gen``) calls ``generate``/``chat``. Only a forecast for a class not
    built yet: at run time a candidate whose call never reaches transformers ``generate`` fails."""
    for klass in cls.__mro__:
        if klass.__name__ in ("BaseModel", "object"):
            break
        module = sys.modules.get(klass.__module__)
        helpers = (
            [f for f in vars(module).values() if inspect.isfunction(f) and f.__module__ == klass.__module__]
            if module is not None
            else []
        )
        for obj in (klass, *helpers):
            try:
                if ENGINE_CALL.search(inspect.getsource(obj)):
                    return True
            except (OSError, TypeError):
                continue
    return False


@register_adapter("Qwen2VLChat")
class Qwen2VLAdapter(EngineAdapter):
    """Qwen2/2.5-VL (vlmeval/vlm/qwen2_vl/model.py): transformers reads ``self.generate_kwargs``
    (VLMEvalKit default: top_k=1, i.e. greedy even with do_sample=True); lmdeploy gets a
    GenerationConfig without do_sample (greedy in lmdeploy); vLLM hard-codes temperature 0. Each
    makes one engine call per answer. Omni checkpoints return (text, audio) pairs: one call per
    candidate."""

    name = "qwen2_vl"
    batched = True
    engines = {"vllm": "use_vllm", "lmdeploy": "use_lmdeploy", "transformers": None}

    def route(self, model: Any) -> Route:
        if "omni" in str(attr(model, "model_path", "")).lower():
            return Route("sequential", f"{self.name}: omni checkpoint, N generate calls with sampling settings")
        return super().route(model)


@register_adapter("Qwen3VLChat")
class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL (vlmeval/vlm/qwen3_vl/model.py): transformers or vLLM (``use_lmdeploy`` is read but
    has no backend there: it runs transformers)."""

    name = "qwen3_vl"
    engines = {"vllm": "use_vllm", "transformers": None}

    def engine(self, model: Any) -> str:
        return "vllm" if attr(model, "use_vllm", False) else "transformers"


@register_adapter("LLaVA_OneVision_HF", "LLaVA_Next", "PaliGemma", "Gemma3", "LFM2VL")
class HFNativeAdapter(EngineAdapter):
    """Wrappers around HF-native transformers classes that call ``self.model.generate`` once per
    answer and decode its first row (vlmeval/vlm/llava/llava.py, gemma.py, liquid.py)."""

    name = "hf_native"
    batched = True


@register_adapter("InternVLChat")
class InternVLAdapter(EngineAdapter):
    """InternVL (vlmeval/vlm/internvl/internvl_chat.py). ``generate_v2`` copies ``self.kwargs`` but
    then hard-codes temperature 0.6 / top_p 0.95 (its built-in BoN values); the remote-code
    ``chat`` hands them to its language model's ``generate``, where the sampling settings are merged;
    with ``use_lmdeploy`` they go into the pipeline's GenerationConfig.

    Chain of thought: InternVL's CoT prompts are keyed on ``use_cot`` and on the USE_COT environment
    variable (read directly in build_prompt). USE_COT is set only while this model builds a prompt
    or generates (``scope``), not for the whole process. With CoT, MPO checkpoints trim
    multiple-choice and yes/no replies to the final answer (``mpo_post_processing``): sampling keeps
    the full reply (``raw_text``) and ``final_answer`` applies the trimming to the chosen one."""

    name = "internvl"
    batched = True
    engines = {"lmdeploy": "use_lmdeploy", "transformers": None}
    _TRIMMERS = ("mpo_post_processing", "extract_boxed_content")

    def route(self, model: Any) -> Route:
        best_of_n = attr(model, "best_of_n", 1) or 1
        if best_of_n > 1:
            return Route(
                "unsupported",
                f"{self.name}: built with best_of_n={best_of_n}, it already runs "
                "VLMEvalKit's own Best-of-N and returns one winner per call; use best_of_n=1",
            )
        return super().route(model)

    def enable_cot(self, model: Any) -> bool:
        model.use_cot = True
        return True

    def scope(self, model: Any) -> contextlib.AbstractContextManager:
        if not getattr(model, "use_cot", False):
            return contextlib.nullcontext()
        return env_var("USE_COT", "1")

    def raw_text(self, model: Any) -> contextlib.AbstractContextManager:
        module = sys.modules.get(type(model).__module__)
        if module is None:
            return contextlib.nullcontext()
        keep = {name: _identity for name in self._TRIMMERS if hasattr(module, name)}
        return patched_attrs(module, keep)

    def final_answer(self, model: Any, text: str, dataset: str | None) -> str:
        """What ``generate_v2`` returns for ``text`` (same conditions, same helpers)."""
        module = sys.modules.get(type(model).__module__)
        if module is None or dataset is None or module.listinstr(["WeMath"], dataset):
            return text
        use_mpo = model.use_mpo_prompt and (model.use_cot or dataset in ["MMStar", "HallusionBench", "OCRBench"])
        if use_mpo:
            return module.mpo_post_processing(text, dataset)
        if model.use_cot and getattr(model, "use_postprocess", False):
            return module.extract_boxed_content(text)
        return text


def _settings_calls(klass: type, settings_attr: str) -> list:
    """The engine calls ``klass``'s settings dict reaches (``code.engine_calls``)."""
    return [c for c in engine_calls(klass, settings_attr) if c.settings]


def _identity(text, *args, **kwargs):
    return text


@contextlib.contextmanager
def env_var(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@register_adapter("MiniCPM_V", "MiniCPM_Llama3_V", "MiniCPM_V_2_6", "MiniCPM_o_2_6", "MiniCPM_V_4")
class MiniCPMAdapter(EngineAdapter):
    """MiniCPM-V (vlmeval/vlm/minicpm_v.py): ``generate_inner`` lets ``self.kwargs`` override its
    defaults (beam search, ``sampling=False``) and the checkpoint's ``chat`` switches on the
    ``sampling`` flag, keeping only the sampling keys it knows (top_p, top_k, temperature, ...).
    The greedy candidate keeps the family's own deterministic decoding (beam search, 3 beams).
    MiniCPM_V_2_6 with use_lmdeploy hard-codes a near-greedy GenerationConfig: rewritten there.
    MiniCPM_V / MiniCPM_Llama3_V cap multiple-choice answers at 20 / 200 new tokens (3 for yes/no):
    raised to ``reasoning_tokens``. The CoT wrappers reduce a reply to its answer letter
    (``extract_answer``): sampling keeps the full reply, ``final_answer`` extracts."""

    name = "minicpm_v"
    settings_attr = "kwargs"
    CAPPED = frozenset({"MiniCPM_V", "MiniCPM_Llama3_V"})  # short-answer caps, raised for reasoning
    flag = "sampling"  # the chat() argument that selects sampling (``switch``)
    engines = {"lmdeploy": "use_lmdeploy", "transformers": None}

    @classmethod
    def fits_code(cls, klass: type) -> str | None:
        """The route puts the sampling switch into ``self.kwargs``: it applies where those reach the
        checkpoint's ``chat`` (which takes ``flag``) or transformers' ``generate`` (which takes
        ``do_sample`` and rejects anything else: ``model_kwargs are not used``), not a mix."""
        methods = {c.method for c in _settings_calls(klass, cls.settings_attr)}
        if methods in ({"chat"}, {"generate"}):
            return None
        where = ", ".join(c.describe() for c in _settings_calls(klass, cls.settings_attr)) or "no engine call"
        return f"its self.{cls.settings_attr} reach {where}, not one chat() or transformers generate()"

    def switch(self, model: Any) -> str:
        """The keyword that turns sampling on where this model's ``self.kwargs`` go: ``flag`` for the
        checkpoint's ``chat``, ``do_sample`` for transformers' ``generate`` (upstream's MiniCPM_V_4_6)."""
        calls = _settings_calls(model_class(model), self.settings_attr)
        return "do_sample" if calls and all(c.method == "generate" for c in calls) else self.flag

    def route(self, model: Any) -> Route:
        if self.engine(model) == "lmdeploy":
            return super().route(model)
        calls = _settings_calls(model_class(model), self.settings_attr)
        into = calls[0].call if calls else "chat"
        return Route(
            "sequential",
            f"{self.name}: N {into}() calls, sampling settings set in self.kwargs "
            f"({self.switch(model)}=True, temperature, top_p, top_k)",
        )

    def check(self, model: Any, dataset: str | None = None) -> None:
        if self.engine(model) == "lmdeploy":
            return super().check(model, dataset)
        if not isinstance(getattr(model, "kwargs", None), dict):
            raise UnsupportedPolicyError(
                f"{describe(model)} has no dict attribute 'kwargs' holding its generation "
                f"settings, so the {self.name} adapter cannot switch it to sampling"
            )

    def sample(self, model, message, dataset, n, cfg: SamplingConfig, greedy_first=None, on_sample=None):
        if self.engine(model) == "lmdeploy":
            return super().sample(model, message, dataset, n, cfg, greedy_first, on_sample)
        if type(model).__name__ in self.CAPPED and cfg.max_new_tokens is None:
            cfg = dataclasses.replace(cfg, max_new_tokens=cfg.reasoning_tokens)
        return SamplingAdapter.sample(self, model, message, dataset, n, cfg, greedy_first, on_sample)

    def applied(self, model: Any, settings: dict) -> contextlib.AbstractContextManager:
        out = {self.switch(model): settings["do_sample"]}
        if settings["do_sample"]:
            out["num_beams"] = 1
        out.update((k, v) for k, v in settings.items() if k != "do_sample" and v is not None)
        return patched_items(model.kwargs, out)

    def enable_cot(self, model: Any) -> bool:
        """Newer MiniCPM wrappers choose CoT prompts (and longer outputs) per dataset with
        ``use_cot(dataset)``; this makes it true for every dataset."""
        if not callable(getattr(type(model), "use_cot", None)):
            return False
        model.use_cot = lambda dataset=None: True
        return True

    def raw_text(self, model: Any) -> contextlib.AbstractContextManager:
        if not callable(getattr(type(model), "extract_answer", None)):
            return contextlib.nullcontext()
        return patched_attrs(model, {"extract_answer": _identity})

    def final_answer(self, model: Any, text: str, dataset: str | None) -> str:
        extract = getattr(type(model), "extract_answer", None)
        return extract(model, text, dataset) if callable(extract) else text


@register_adapter("MiniCPM_o_4_5")
class MiniCPMo45Adapter(MiniCPMAdapter):
    """MiniCPM-o 4.5's chat takes ``do_sample`` instead of ``sampling``."""

    name = "minicpm_o_4_5"
    flag = "do_sample"
