"""In-process PRM with transformers: one forward pass per candidate reads P(+) at every step.

Two kinds of checkpoint, told apart by their ``config.json``:

* HF-native image-text-to-text models (``AutoModelForImageTextToText``): the conversation goes
  through the checkpoint's own chat template and processor.
* Remote-code InternVL checkpoints (``auto_map`` -> ``InternVLChatModel``, e.g. VisualPRM-8B): the
  conversation is rendered in the checkpoint's conversation template (``config.template``,
  ``internvl2_5``), each ``<image>`` is expanded to ``<img>`` + ``<IMG_CONTEXT>`` x
  (``num_image_token`` x tiles) + ``</img>`` as InternVL's ``chat`` does, images are tiled with
  VLMEvalKit's InternVL utilities (``max_num`` tiles, 12 by default), and the model is called as
  ``forward(pixel_values, input_ids, attention_mask, image_flags)``, as VisualPRM's own
  ``generate_steps_with_soft_score`` does.

Either way the score of step k is softmax over the logits of {"+", "-"} at the position that
predicts the k-th assistant "+" (VisualPRM's ``find_placeholder_idx``/soft score).
"""

from __future__ import annotations

from collections.abc import Sequence

from vlmeval_prm.counters import bump
from vlmeval_prm.loading import (
    INTERNVL_MAX_TILES,
    checkpoint_config,
    internvl_tiles,
    load_images,
    load_model_and_processor,
    load_remote_code_model,
    uses_remote_code,
)
from vlmeval_prm.logs import get_logger
from vlmeval_prm.prm.base import PRMScorer, StepScores, failed, prepare
from vlmeval_prm.prm.conversation import (
    INTERNVL_IMAGE,
    PRM_SYSTEM_PROMPT,
    PRMFormat,
    build_messages,
    chat_template,
    render_prompt,
)

log = get_logger(__name__)

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"


def label_pattern(tokenizer, header: str, good: str) -> list[int]:
    """Token ids of an assistant header followed by the "+" label; the label must stay one token."""
    ids = tokenizer.encode(header + good, add_special_tokens=False)
    good_ids = tokenizer.encode(good, add_special_tokens=False)
    if len(good_ids) != 1 or ids[-1:] != good_ids:
        raise ValueError(f"the PRM tokenizer does not keep {good!r} as one token after the assistant header "
                         f"{header!r}; a one-token label is required")
    return ids


def single_token(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"PRM tokenizer splits {text!r} into {len(ids)} tokens; a one-token label is required")
    return ids[0]


class _NativeInputs:
    """An HF-native PRM: its processor's chat template and image processing."""

    def __init__(self, path: str, fmt: PRMFormat, device, dtype, trust_remote_code, attn_implementation):
        self.fmt = fmt
        self.model, self.processor = load_model_and_processor(path, device, dtype, bool(trust_remote_code),
                                                              attn_implementation)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.pattern = label_pattern(self.tokenizer, self._assistant_header(), fmt.good_token)

    def _assistant_header(self) -> str:
        """What the chat template puts before an assistant turn (e.g. "<|im_start|>assistant\\n")."""
        probe = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
        with_prompt = self.processor.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        without = self.processor.apply_chat_template(probe, tokenize=False, add_generation_prompt=False)
        if not with_prompt.startswith(without) or with_prompt == without:
            raise ValueError("cannot find the assistant header of the PRM's chat template")
        return with_prompt[len(without):]

    def render(self, question: str, steps: list[str], n_images: int) -> str:
        messages = build_messages(question, steps, n_images, self.fmt)
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def images(self, paths: Sequence[str]):
        return load_images(paths)

    def encode(self, texts: list[str], images) -> dict:
        # right padding keeps every row's positions identical to scoring it alone
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True, "padding_side": "right"}
        if images:
            kwargs["images"] = [list(images) for _ in texts]
        return dict(self.processor(**kwargs).to(self.model.device))


class _InternVLRemoteInputs:
    """A remote-code InternVL checkpoint (``InternVLChatModel``), fed as InternVL's own chat code feeds it."""

    def __init__(self, path: str, fmt: PRMFormat, device, dtype, max_num: int):
        import torch

        self._torch = torch
        self.model, self.tokenizer = load_remote_code_model(path, device, dtype)
        self.fmt = fmt
        config = self.model.config
        self.image_size = getattr(config, "force_image_size", None) or config.vision_config.image_size
        self.num_image_token = int(self.model.num_image_token)
        self.max_num = max_num
        self.context_id = self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        if self.context_id is None or self.context_id == self.tokenizer.unk_token_id:
            raise ValueError(f"{path}: the tokenizer has no {IMG_CONTEXT} token; not an InternVL checkpoint")
        self.model.img_context_token_id = self.context_id  # as InternVL's chat() sets it
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pattern = label_pattern(self.tokenizer, fmt.template.header("assistant"), fmt.good_token)

    def render(self, question: str, steps: list[str], n_images: int) -> str:
        return render_prompt(question, steps, n_images, self.fmt, image=INTERNVL_IMAGE + "\n")

    def images(self, paths: Sequence[str]):
        return internvl_tiles(paths, self.image_size, self.max_num)

    def expand(self, text: str, counts: list[int]) -> str:
        """Each ``<image>`` in order -> <img> + <IMG_CONTEXT> x (num_image_token x its tiles) + </img>."""
        if text.count(INTERNVL_IMAGE) != len(counts):
            raise ValueError(f"{text.count(INTERNVL_IMAGE)} image placeholders for {len(counts)} images "
                             f"(does the question contain {INTERNVL_IMAGE!r}?)")
        for n in counts:
            text = text.replace(INTERNVL_IMAGE, IMG_START + IMG_CONTEXT * self.num_image_token * n + IMG_END, 1)
        return text

    def encode(self, texts: list[str], images) -> dict:
        torch = self._torch
        tiles, counts = images if images else ([], [])
        enc = self.tokenizer([self.expand(t, counts) for t in texts], return_tensors="pt", padding=True,
                             padding_side="right")
        dtype = next(self.model.parameters()).dtype
        if tiles:
            pixel_values = torch.cat([torch.cat(tiles)] * len(texts))
            flags = torch.ones(pixel_values.shape[0], 1, dtype=torch.long)
        else:  # no image: one blank tile that the model drops (image_flags 0), as generate_steps_with_soft_score does
            pixel_values = torch.zeros(1, 3, self.image_size, self.image_size)
            flags = torch.zeros(1, 1, dtype=torch.long)
        device = self.model.device
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device),
                "pixel_values": pixel_values.to(device, dtype), "image_flags": flags.to(device)}


class TransformersPRM(PRMScorer):
    """VisualPRM-format scoring in-process, for HF-native and remote-code InternVL PRMs.

    Candidates of one question are batched (``batch_size`` at a time, one forward pass per batch);
    a batch that fails is retried one candidate at a time so one bad candidate cannot sink the
    others. ``trust_remote_code``: None (default) runs a checkpoint's own modelling code when its
    ``config.json`` names it (``auto_map``), False refuses such a checkpoint. ``max_num``: InternVL
    tiles per image (remote-code checkpoints). ``template``: a name in ``conversation.TEMPLATES`` or
    a dict of ``ChatTemplate`` fields, for a remote-code checkpoint whose ``config.template`` is not
    one we know; an HF-native checkpoint always uses its own chat template.
    """

    def __init__(self, path: str, system_prompt: str | None = PRM_SYSTEM_PROMPT, template: str | dict | None = None,
                 batch_size: int = 8, device: str | None = None, dtype: str | None = None,
                 trust_remote_code: bool | None = None, attn_implementation: str | None = None,
                 max_num: int = INTERNVL_MAX_TILES):
        import torch

        self._torch = torch
        self.identity = f"transformers:{path}"
        self.batch_size = batch_size
        config = checkpoint_config(path)
        if uses_remote_code(config):
            if trust_remote_code is False:
                raise ValueError(f"{path} needs its own modelling code ({config.get('auto_map')}); "
                                 "run with trust_remote_code=True (or leave it unset) to load it")
            name = template if template is not None else config.get("template")
            log.info("loading %s with its own modelling code (trust_remote_code; %s template, %d tiles per image)",
                     path, name, max_num)
            self.fmt = PRMFormat(system_prompt=system_prompt, template=chat_template(name))
            self.inputs = _InternVLRemoteInputs(path, self.fmt, device, dtype, max_num)
        else:
            if template is not None:
                raise ValueError(f"{path} is rendered with its own chat template; the template option applies "
                                 "to remote-code checkpoints and LMDeploy /generate prompts only")
            self.fmt = PRMFormat(system_prompt=system_prompt)
            self.inputs = _NativeInputs(path, self.fmt, device, dtype, trust_remote_code, attn_implementation)
        self.model, self.tokenizer = self.inputs.model, self.inputs.tokenizer
        self.good_id = single_token(self.tokenizer, self.fmt.good_token)
        self.bad_id = single_token(self.tokenizer, self.fmt.bad_token)
        self.max_length = getattr(self.tokenizer, "model_max_length", None)

    def placeholder_positions(self, input_ids: Sequence[int]) -> list[int]:
        """Positions of every assistant "+" placeholder (the last token of each header + label match)."""
        p, ids = self.inputs.pattern, list(input_ids)
        return [i + len(p) - 1 for i in range(len(ids) - len(p) + 1) if ids[i:i + len(p)] == p]

    def render(self, question: str, steps: list[str], n_images: int) -> str:
        """The conversation text the model sees (images as their placeholders, not yet expanded)."""
        return self.inputs.render(question, steps, n_images)

    def score(self, question: str, images: Sequence[str], candidates: Sequence[Sequence[str]],
              mode: str = "step") -> list[StepScores]:
        steps_list, results = prepare(candidates, mode)
        todo = [i for i, r in enumerate(results) if r is None]
        try:
            loaded = self.inputs.images(images)
        except ValueError as exc:
            return [r or failed(steps_list[i], str(exc)) for i, r in enumerate(results)]
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            try:
                scored = self._forward(question, loaded, len(images), [steps_list[i] for i in batch])
            except Exception as exc:  # isolate the candidate that broke the batch
                log.warning("PRM batch failed (%s); scoring its candidates one by one", exc)
                scored = []
                for i in batch:
                    try:
                        scored += self._forward(question, loaded, len(images), [steps_list[i]])
                    except Exception as one_exc:
                        scored.append(failed(steps_list[i], f"PRM forward failed: {one_exc}",
                                             transient=isinstance(one_exc, self._torch.OutOfMemoryError)))
            for i, res in zip(batch, scored):
                results[i] = res
        return results  # type: ignore[return-value]

    def _forward(self, question: str, images, n_images: int, batch: list[list[str]]) -> list[StepScores]:
        torch = self._torch
        inputs = self.inputs.encode([self.render(question, steps, n_images) for steps in batch], images)
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
