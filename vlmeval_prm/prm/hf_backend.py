"""In-process PRM with transformers: one forward pass per candidate reads P(+) at every step."""

from __future__ import annotations

from collections.abc import Sequence

from vlmeval_prm.counters import bump
from vlmeval_prm.loading import load_images, load_model_and_processor
from vlmeval_prm.logs import get_logger
from vlmeval_prm.prm.base import PRMScorer, StepScores, failed, prepare
from vlmeval_prm.prm.conversation import PRMFormat, build_messages

log = get_logger(__name__)


class TransformersPRM(PRMScorer):
    """VisualPRM-format scoring for HF-native image-text-to-text PRMs.

    Candidates of one question are batched (``batch_size`` at a time); a batch that fails is
    retried one candidate at a time so one bad candidate cannot sink the others.
    """

    def __init__(self, path: str, system_prompt: str | None = PRMFormat.system_prompt,
                 batch_size: int = 8, device: str | None = None, dtype: str | None = None,
                 trust_remote_code: bool = False, attn_implementation: str | None = None):
        import torch

        self._torch = torch
        self.identity = f"transformers:{path}"
        self.fmt = PRMFormat(system_prompt=system_prompt)
        self.batch_size = batch_size
        self.model, self.processor = load_model_and_processor(
            path, device, dtype, trust_remote_code, attn_implementation)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.good_id = self._single_token(self.fmt.good_token)
        self.bad_id = self._single_token(self.fmt.bad_token)
        self.header_ids = self._assistant_header_ids()
        self.max_length = getattr(self.tokenizer, "model_max_length", None)

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"PRM tokenizer splits {text!r} into {len(ids)} tokens; a one-token label is required")
        return ids[0]

    def _assistant_header_ids(self) -> list[int]:
        """Tokens the chat template puts before an assistant turn (e.g. "<|im_start|>assistant\\n")."""
        probe = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
        with_prompt = self.processor.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        without = self.processor.apply_chat_template(probe, tokenize=False, add_generation_prompt=False)
        if not with_prompt.startswith(without) or with_prompt == without:
            raise ValueError("cannot find the assistant header of the PRM's chat template")
        return self.tokenizer.encode(with_prompt[len(without):], add_special_tokens=False)

    def placeholder_positions(self, input_ids: Sequence[int]) -> list[int]:
        """Positions of every assistant "+" placeholder: the label token right after an assistant header."""
        h, ids = self.header_ids, list(input_ids)
        return [i + len(h) for i in range(len(ids) - len(h))
                if ids[i:i + len(h)] == h and ids[i + len(h)] == self.good_id]

    def render(self, question: str, steps: list[str], n_images: int) -> str:
        messages = build_messages(question, steps, n_images, self.fmt)
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def score(self, question: str, images: Sequence[str], candidates: Sequence[Sequence[str]],
              mode: str = "step") -> list[StepScores]:
        steps_list, results = prepare(candidates, mode)
        todo = [i for i, r in enumerate(results) if r is None]
        try:
            pil_images = load_images(images)
        except ValueError as exc:
            return [r or failed(steps_list[i], str(exc)) for i, r in enumerate(results)]
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            try:
                scored = self._forward(question, pil_images, [steps_list[i] for i in batch])
            except Exception as exc:  # isolate the candidate that broke the batch
                log.warning("PRM batch failed (%s); scoring its candidates one by one", exc)
                scored = []
                for i in batch:
                    try:
                        scored += self._forward(question, pil_images, [steps_list[i]])
                    except Exception as one_exc:
                        scored.append(failed(steps_list[i], f"PRM forward failed: {one_exc}"))
            for i, res in zip(batch, scored):
                results[i] = res
        return results  # type: ignore[return-value]

    def _forward(self, question: str, pil_images: list, batch: list[list[str]]) -> list[StepScores]:
        torch = self._torch
        texts = [self.render(question, steps, len(pil_images)) for steps in batch]
        # right padding keeps every row's positions identical to scoring it alone
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True, "padding_side": "right"}
        if pil_images:
            kwargs["images"] = [list(pil_images) for _ in batch]
        inputs = self.processor(**kwargs).to(self.model.device)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        if self.max_length and max(lengths) > self.max_length:
            too_long = [i for i, n in enumerate(lengths) if n > self.max_length]
            if len(batch) > 1:
                raise ValueError(f"candidates {too_long} exceed the context length")
            return [failed(batch[0], f"context length exceeded: {lengths[0]} > {self.max_length} tokens")]
        with torch.inference_mode():
            logits = self.model(**inputs).logits.float()
        bump("prm_forward_passes")
        bump("prm_sequences", len(batch))
        bump("prm_prefill_tokens", int(sum(lengths)))
        out = []
        for row, steps in enumerate(batch):
            pos = self.placeholder_positions(inputs["input_ids"][row].tolist())
            if len(pos) != len(steps):
                out.append(failed(steps, f"found {len(pos)} score placeholders for {len(steps)} steps"))
                continue
            pair = logits[row, [p - 1 for p in pos]][:, [self.good_id, self.bad_id]]
            out.append(StepScores(steps=steps, scores=torch.softmax(pair, dim=-1)[:, 0].tolist()))
        return out
