"""Where local wrappers' generation settings reach the engine, and how N candidates share one call.

A VLMEvalKit wrapper builds its prompt, calls an engine (transformers ``generate``, a vLLM ``LLM``,
an lmdeploy pipeline) with settings it hard-codes or keeps in a per-family attribute, and decodes
one answer. An :class:`Interceptor` shadows the engine call for the duration of one batch of
candidates and

- merges the sampling settings into the call, whatever the wrapper passed (so it does not matter
  where a family keeps its settings);
- on the first call, asks the engine for ``batch`` sequences at once (``num_return_sequences``,
  ``SamplingParams(n=...)``, or ``batch`` copies of the prompt for lmdeploy) and returns the first;
- on each later call for the same prompt, returns the next stored sequence without computing
  anything, so the wrapper's own decoding and post-processing turn every sequence into its answer.

The wrapper therefore runs ``batch`` times, but the engine once. ``calls`` counts the wrapper's
calls to the engine per candidate, which the adapters check: a wrapper that never reaches the
engine (settings could not apply) or reaches it more than once per answer (replay would mix
answers up) fails loudly instead of sampling silently wrong.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

from vlmeval_prm.counters import bump
from vlmeval_prm.policy.base import shadowed


class ReplayError(RuntimeError):
    """A later call of a batch did not match the prompt of the call that produced the batch."""


class Interceptor:
    """One batch of ``batch`` candidates with engine settings ``fields`` (engine vocabulary);
    ``label`` (the model's class) names its work counters."""

    def __init__(self, fields: dict, batch: int = 1, label: str = ""):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.fields, self.batch, self.label = dict(fields), batch, label
        self.pending: list = []
        self.fingerprint: Any = None
        self.real_calls = 0
        self.calls = 0  # outermost engine calls since the last ``reset_calls``
        self._local = threading.local()

    # -- hooks for one engine kind ---------------------------------------------------------------
    def expand(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The call that produces ``batch`` sequences with ``fields`` applied."""
        raise NotImplementedError

    def nested(self, kwargs: dict) -> dict:
        """Keyword arguments of an engine call made from inside the outermost one."""
        return kwargs

    def split(self, out: Any, args: tuple, kwargs: dict) -> list:
        """The engine's answer to the expanded call, as ``batch`` answers to a single call."""
        raise NotImplementedError

    def key(self, args: tuple, kwargs: dict) -> Any:
        """What identifies the prompt of a call (compared with ``same``)."""
        return None

    def same(self, a: Any, b: Any) -> bool:
        return a == b

    # -- the shadowing call ----------------------------------------------------------------------
    def reset_calls(self) -> None:
        self.calls = 0

    def wrap(self, original: Callable) -> Callable:
        def call(*args, **kwargs):
            depth = getattr(self._local, "depth", 0)
            if depth:
                return original(*args, **self.nested(kwargs))
            self._local.depth = depth + 1
            try:
                self.calls += 1
                key = self.key(args, kwargs)
                if self.pending:
                    if not self.same(key, self.fingerprint):
                        raise ReplayError(
                            "the model asked its engine for a different prompt than the one the batch was sampled for"
                        )
                    return self.pending.pop(0)
                call_args, call_kwargs = self.expand(args, kwargs)
                out = original(*call_args, **call_kwargs)
                self.real_calls += 1
                bump("policy_generate_calls")
                bump("policy_sequences", self.batch)
                if self.label:  # per model class, for benchmarks and tests that run several
                    bump(f"policy_generate_calls:{self.label}")
                    bump(f"policy_sequences:{self.label}", self.batch)
                if self.batch == 1:
                    return out
                rows = self.split(out, args, kwargs)
                if len(rows) != self.batch:
                    raise RuntimeError(f"asked the engine for {self.batch} sequences, got {len(rows)}")
                self.fingerprint, self.pending = key, rows[1:]
                return rows[0]
            finally:
                self._local.depth = depth

        return call


# -- transformers ------------------------------------------------------------------------------


class HFGenerate(Interceptor):
    """transformers ``generate``: settings are keyword arguments (they override a
    ``generation_config`` passed alongside), N sequences via ``num_return_sequences``."""

    #: End and padding tokens of the intercepted model's own generation config (``bind_defaults``).
    default_stops: frozenset = frozenset()
    default_pad: int | None = None

    def expand(self, args, kwargs):
        kwargs = {**kwargs, **self.fields}
        if self.batch > 1:
            kwargs["num_return_sequences"] = self.batch
        return args, kwargs

    def nested(self, kwargs):
        return {**kwargs, **self.fields}

    def key(self, args, kwargs):
        for name in ("input_ids", "inputs_embeds", "inputs"):
            if kwargs.get(name) is not None:
                return kwargs[name]
        return next((a for a in args if hasattr(a, "shape")), None)

    def same(self, a, b):
        import torch

        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return a.shape == b.shape and bool(torch.equal(a, b.to(a.device)))
        return a is None and b is None

    def split(self, out, args, kwargs):
        """Rows of the output, each cut where a single-sequence call would have stopped (after its
        first end token; trailing padding removed), so the wrapper decodes what it always does."""
        import torch

        if not isinstance(out, torch.Tensor):
            raise TypeError(f"cannot split a {type(out).__name__} returned by generate into candidates")
        prompt = self.key(args, kwargs)
        start = 0
        if (
            isinstance(prompt, torch.Tensor)
            and prompt.dtype in (torch.long, torch.int)
            and prompt.dim() == 2
            and out.shape[1] >= prompt.shape[1]
            and torch.equal(out[0, : prompt.shape[1]], prompt[0].to(out.device))
        ):
            start = prompt.shape[1]  # decoder-only output: the prompt, then the new tokens
        stops = set(_as_list(self.fields.get("eos_token_id", kwargs.get("eos_token_id"))))
        pad = kwargs.get("pad_token_id")
        config = kwargs.get("generation_config")
        if config is not None:
            stops |= set(_as_list(getattr(config, "eos_token_id", None)))
            pad = getattr(config, "pad_token_id", None) if pad is None else pad
        stops |= self.default_stops
        pad = self.default_pad if pad is None else pad
        rows = []
        for row in out:
            new = row[start:].tolist()
            end = next((i + 1 for i, t in enumerate(new) if t in stops), None)
            if end is None:
                end = len(new)
                while pad is not None and end and new[end - 1] == pad:
                    end -= 1
            rows.append(row[: start + end].unsqueeze(0))
        return rows

    def bind_defaults(self, target: Any) -> None:
        config = getattr(target, "generation_config", None)
        if config is not None:
            self.default_stops = frozenset(_as_list(getattr(config, "eos_token_id", None)))
            self.default_pad = getattr(config, "pad_token_id", None)


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    if hasattr(value, "tolist"):
        value = value.tolist()
        return value if isinstance(value, list) else [value]
    return [value]


def generate_targets(model: Any) -> list:
    """The transformers models a wrapper can reach: attributes that are ``GenerationMixin``s and
    every ``GenerationMixin`` inside an attribute that is a torch module (e.g. the language model
    of a remote-code ``chat`` model), each once."""
    try:
        import torch
        from transformers import GenerationMixin
    except ImportError:
        return []
    found: dict[int, Any] = {}
    for value in list(vars(model).values()):
        if isinstance(value, GenerationMixin):
            found.setdefault(id(value), value)
        if isinstance(value, torch.nn.Module):
            for sub in value.modules():
                if isinstance(sub, GenerationMixin):
                    found.setdefault(id(sub), sub)
    return list(found.values())


@contextlib.contextmanager
def hf_intercepted(targets: list, interceptor: HFGenerate) -> Iterator[HFGenerate]:
    if targets:
        interceptor.bind_defaults(targets[0])
    with contextlib.ExitStack() as stack:
        for target in targets:
            stack.enter_context(shadowed(target, "generate", interceptor.wrap))
        yield interceptor


# -- vLLM --------------------------------------------------------------------------------------


class VLLMGenerate(Interceptor):
    """vLLM ``LLM.generate(prompts, sampling_params)``: the wrapper's SamplingParams (its max_tokens
    and stop conditions) with the sampling fields and ``n`` set; answers split per completion."""

    def expand(self, args, kwargs):
        args, kwargs = list(args), dict(kwargs)
        params = kwargs.get("sampling_params", args[1] if len(args) > 1 else None)
        if params is None:
            raise TypeError("vLLM generate called without sampling_params; cannot apply sampling settings")
        params = params.clone() if hasattr(params, "clone") else copy.copy(params)
        for key, value in {**self.fields, "n": self.batch}.items():
            setattr(params, key, value)
        if "sampling_params" in kwargs or len(args) < 2:
            kwargs["sampling_params"] = params
        else:
            args[1] = params
        return tuple(args), kwargs

    def key(self, args, kwargs):
        return _text_key(kwargs.get("prompts", args[0] if args else None))

    def split(self, out, args, kwargs):
        rows = []
        for i in range(self.batch):
            row = []
            for request in out:
                one = copy.copy(request)
                one.outputs = [request.outputs[i]]
                row.append(one)
            rows.append(row)
        return rows


@contextlib.contextmanager
def vllm_intercepted(llm: Any, interceptor: VLLMGenerate) -> Iterator[VLLMGenerate]:
    with shadowed(llm, "generate", interceptor.wrap):
        yield interceptor


# -- lmdeploy pipeline -------------------------------------------------------------------------


class PipelineCall(Interceptor):
    """An lmdeploy pipeline called as ``pipe(prompts, gen_config=...)``: the GenerationConfig the
    wrapper built (often without do_sample, i.e. greedy in lmdeploy) gets the sampling fields; N
    candidates are ``batch`` copies of the prompt in ONE pipeline call (lmdeploy batches them)."""

    def expand(self, args, kwargs):
        args, kwargs = list(args), dict(kwargs)
        gen_config = kwargs.get("gen_config")
        if gen_config is None:
            raise TypeError("lmdeploy pipeline called without gen_config; cannot apply sampling settings")
        gen_config = copy.copy(gen_config)
        for key, value in self.fields.items():
            setattr(gen_config, key, value)
        kwargs["gen_config"] = gen_config
        prompts = args[0] if args else kwargs.pop("prompts")
        if self.batch > 1:
            if not isinstance(prompts, list) or len(prompts) != 1:
                raise TypeError("batched lmdeploy sampling needs a pipeline call with one prompt")
            prompts = prompts * self.batch
        return (prompts, *args[1:]), kwargs

    def key(self, args, kwargs):
        return _text_key(args[0] if args else kwargs.get("prompts"))

    def split(self, out, args, kwargs):
        return [[item] for item in out]


class PipelineProxy:
    """Stands in for an lmdeploy pipeline during one batch; everything but the call passes through."""

    def __init__(self, pipe: Any, interceptor: PipelineCall):
        self._pipe, self._call = pipe, interceptor.wrap(pipe)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


@contextlib.contextmanager
def pipeline_intercepted(model: Any, interceptor: PipelineCall, attr: str = "model") -> Iterator[PipelineCall]:
    pipe = getattr(model, attr)
    setattr(model, attr, PipelineProxy(pipe, interceptor))
    try:
        yield interceptor
    finally:
        setattr(model, attr, pipe)


def _text_key(prompts: Any) -> str:
    """A prompt's identity without its images' in-memory objects (whose reprs change per call)."""
    return json.dumps(prompts, sort_keys=True, default=lambda o: type(o).__name__)
