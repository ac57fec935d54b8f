"""``TransformersChat``: a CPU-capable VLMEvalKit wrapper for HF-native image-text-to-text models.

VLMEvalKit's local wrappers hard-code CUDA; this one runs anywhere and samples all N candidates
of a question in ONE batched ``generate`` call (``num_return_sequences``) instead of N calls.
"""

from __future__ import annotations

from vlmeval.vlm.base import BaseModel

from vlmeval_prm.counters import bump
from vlmeval_prm.loading import load_images, load_model_and_processor, message_parts
from vlmeval_prm.policy.base import Route, Sample, SamplingAdapter, SamplingConfig, failed, register_adapter


class TransformersChat(BaseModel):
    INTERLEAVE = False

    def __init__(
        self,
        model_path: str,
        max_new_tokens: int = 256,
        device: str | None = None,
        dtype: str | None = None,
        system_prompt: str | None = None,
        trust_remote_code: bool = False,
        **generate_kwargs,
    ):
        super().__init__()
        self.model_path = model_path
        self.model, self.processor = load_model_and_processor(model_path, device, dtype, trust_remote_code)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.system_prompt = system_prompt
        self.generate_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, **generate_kwargs}

    def _inputs(self, message):
        text, image_paths = message_parts(message)
        content = [{"type": "image"} for _ in image_paths] + [{"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = {"text": [prompt], "return_tensors": "pt"}
        if image_paths:
            kwargs["images"] = [load_images(image_paths)]
        return self.processor(**kwargs).to(self.model.device)

    def _generate(self, message, n: int, **overrides) -> list[str]:
        import torch

        inputs = self._inputs(message)
        kwargs = {**self.generate_kwargs, **overrides}
        with torch.inference_mode():
            out = self.model.generate(**inputs, num_return_sequences=n, **kwargs)
        bump("policy_generate_calls")
        bump("policy_sequences", n)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def generate_inner(self, message, dataset=None) -> str:
        return self._generate(message, 1)[0]

    def sample_n(self, message, plan: list[tuple[int, dict]]) -> list[Sample]:
        """``plan``: (count, HF generate settings) pairs; each pair is ONE batched generate call."""
        out: list[Sample] = []
        for count, settings in plan:
            kwargs = {k: v for k, v in settings.items() if v is not None}
            try:
                out += [Sample(text=t, error=None, settings=settings) for t in self._generate(message, count, **kwargs)]
            except Exception as exc:  # every candidate of the failed call is a recorded failure
                out += [failed(exc, settings)] * count
        return out


@register_adapter("TransformersChat")
class HFChatAdapter(SamplingAdapter):
    """Candidate 0 greedy when asked (one extra call); the others in one call per ``batch_size``."""

    name = "hf_chat_batched"

    def route(self, model) -> Route:
        return Route("batched", f"{self.name}: N candidates from one generate call with num_return_sequences=N")

    def sample(self, model, message, dataset, n, cfg: SamplingConfig, greedy_first=None, on_sample=None):
        greedy_first = cfg.first_greedy if greedy_first is None else greedy_first
        plan = [(1, self.settings(cfg, greedy=True))] if greedy_first else []
        rest, sampled = n - len(plan), self.settings(cfg, greedy=False)
        step = cfg.batch_size or max(rest, 1)
        plan += [(min(step, rest - k), sampled) for k in range(0, rest, step)]
        return model.sample_n(model.preproc_content(message), plan)
