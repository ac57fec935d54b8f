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

Shared prefix (``share_prefix``, on by default): the N candidates of a question share their first
tokens (system turn, image tokens, question), so that prefix is prefilled once, with the images,
and its KV cache is expanded across a batch of candidates whose own tokens (the suffixes) extend it.
Prefill work drops from N·P + ΣR_i tokens to P + ΣR_i, and the vision encoder runs once instead
of N times. The prefix is the longest common token prefix; steps whose "+" falls inside it (when
candidates share whole steps) are scored from the prefix's own hidden states, once. Batches are
sized so the expanded caches fit ``kv_budget_mb``. Sharing needs a decoder whose positions are
plain 1D offsets and whose image inputs enter only through the prompt's image tokens: remote-code
InternVL (its ``language_model`` extended after ``extract_feature`` fills the image tokens, as
``InternVLChatModel.forward`` does) and the native types in ``SHARED_PREFIX_MODEL_TYPES``; other
models (e.g. Qwen2-VL's 3D M-RoPE positions) are scored unshared. Scores match the unshared
computation to float rounding (tests/test_prm_prefix.py).
"""

from __future__ import annotations

import inspect
import itertools
import os
from collections.abc import Sequence
from dataclasses import asdict

from vlmeval_prm.counters import bump
from vlmeval_prm.loading import (
    INTERNVL_MAX_TILES,
    _device_dtype,
    checkpoint_config,
    internvl_tiles,
    load_model_and_processor,
    load_package_model,
    load_remote_code_model,
    package_classes,
    uses_remote_code,
)
from vlmeval_prm.logs import get_logger
from vlmeval_prm.prm.base import PRMScorer, StepScores, failed, prepare
from vlmeval_prm.prm.conversation import INTERNVL_IMAGE, chat_template
from vlmeval_prm.prm.formats import DEFAULT_FORMAT, FORMAT_DEFAULT, PRMFormat, build_format, detect_format, format_class

log = get_logger(__name__)

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"

#: HF-native model types whose decoder uses 1D positions and takes images only through the prompt's
#: image tokens, so a prefix KV cache extended by text-only suffixes gives the full forward's logits.
SHARED_PREFIX_MODEL_TYPES = frozenset({"internvl", "llava", "llava_next", "llava_onevision"})
#: Default memory for the candidates' expanded KV caches in one shared-prefix batch (MiB).
KV_BUDGET_MB = 4096.0
#: Processor outputs aligned with the text; every other output is image input, one equal block per row.
_TEXT_KEYS = frozenset({"input_ids", "attention_mask"})


def label_pattern(tokenizer, header: str, good: str) -> list[int]:
    """Token ids of an assistant header followed by the "+" label; the label must stay one token."""
    ids = tokenizer.encode(header + good, add_special_tokens=False)
    good_ids = tokenizer.encode(good, add_special_tokens=False)
    if len(good_ids) != 1 or ids[-1:] != good_ids:
        raise ValueError(
            f"the PRM tokenizer does not keep {good!r} as one token after the assistant header "
            f"{header!r}; a one-token label is required"
        )
    return ids


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every row shares."""
    first, shortest = rows[0], min(len(r) for r in rows)
    for i in range(shortest):
        if any(r[i] != first[i] for r in rows):
            return i
    return shortest


def _cache_of(output):
    """The KV cache a forward returned: ``cache`` (transformers 5) or ``past_key_values`` (4.x, and
    remote code written for it, e.g. InternLM2's tuple of (key, value) per layer)."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def _with_cache(module, cache) -> dict:
    """``module.forward``'s keyword for a KV cache (``cache`` in transformers 5, else ``past_key_values``)."""
    return {"cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values": cache}


def _cache_layers(cache) -> list[tuple]:
    """(key, value) per layer, each [batch, heads, tokens, dim]. Only caches that grow by concatenation
    along the tokens (a full-attention ``DynamicCache``, legacy tuples) can be shared."""
    if isinstance(cache, (tuple, list)):
        return [tuple(layer[:2]) for layer in cache]
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
        raise NotImplementedError(f"a {type(cache).__name__} cannot be shared across candidates")
    return [(layer.keys, layer.values) for layer in cache.layers]


def expand_cache(cache, rows: int):
    """A batch-1 prefix cache as a cache of the same kind for ``rows`` candidates. The prefix is not
    copied here (views); each layer is materialised once, when the candidates' tokens extend it."""
    layers = [(k.expand(rows, *k.shape[1:]), v.expand(rows, *v.shape[1:])) for k, v in _cache_layers(cache)]
    return tuple(layers) if isinstance(cache, (tuple, list)) else type(cache)(layers)


def cache_bytes(cache) -> int:
    return sum(k.nbytes + v.nbytes for k, v in _cache_layers(cache))


class _NativeInputs:
    """An HF-native PRM: its processor's chat template and image processing."""

    def __init__(self, path: str, fmt: PRMFormat, device, dtype, trust_remote_code, attn_implementation):
        self.fmt = fmt
        self.model, self.processor = load_model_and_processor(
            path, device, dtype, bool(trust_remote_code), attn_implementation
        )
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.pattern = None if fmt.marker else label_pattern(self.tokenizer, self._assistant_header(), fmt.good_token)

    def _assistant_header(self) -> str:
        """What the chat template puts before an assistant turn (e.g. "<|im_start|>assistant\\n")."""
        probe = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
        with_prompt = self.processor.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        without = self.processor.apply_chat_template(probe, tokenize=False, add_generation_prompt=False)
        if not with_prompt.startswith(without) or with_prompt == without:
            raise ValueError("cannot find the assistant header of the PRM's chat template")
        return with_prompt[len(without) :]

    def logits(self, inputs: dict):
        return self.model(**inputs).logits.float()

    def render(self, question: str, steps: list[str], n_images: int) -> str:
        messages = self.fmt.messages(question, steps, n_images)
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def images(self, paths: Sequence[str]):
        return [self.fmt.load_image(p) for p in paths]

    def encode(self, texts: list[str], images) -> dict:
        # right padding keeps every row's positions identical to scoring it alone
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True, "padding_side": "right"}
        kwargs.update(self.fmt.processor_kwargs)
        if images:
            kwargs["images"] = [list(images) for _ in texts]
        return dict(self.processor(**kwargs).to(self.model.device))

    # -- shared prefix: the model without its head (``base_model``), then the head on read positions

    def can_share(self) -> str | None:
        """None when the prefix can be shared, else why not."""
        kind = self.model.config.model_type
        return (
            None
            if kind in SHARED_PREFIX_MODEL_TYPES
            else f"model type {kind!r} is not among those known to score the same from a shared prefix"
        )

    @property
    def image_token_id(self) -> int | None:
        config = self.model.config
        return getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)

    @property
    def head(self):
        return self.model.get_output_embeddings()

    @property
    def base(self):
        """The model without its head. ``base_model`` is that on 5.x; on 4.57 image-text-to-text classes
        such as InternVL have an empty ``base_model_prefix``, so ``base_model`` is the whole model and
        the body is its ``model``."""
        base = self.model.base_model
        return self.model.model if base is self.model else base

    def split(self, texts: list[str], images) -> tuple[list[list[int]], dict]:
        """Every row's token ids (unpadded) and one row's image inputs (they are the same for all rows)."""
        enc = self.encode(texts, images)
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        rows = [ids[:n] for ids, n in zip(enc["input_ids"].tolist(), lengths)]
        one = {}
        for key, value in enc.items():
            if key in _TEXT_KEYS:
                continue
            if value.shape[0] % len(texts):
                raise ValueError(f"the processor's {key!r} does not split into {len(texts)} equal rows")
            one[key] = value[: value.shape[0] // len(texts)]
        return rows, one

    def prefill(self, prefix, image_inputs: dict):
        """The prefix's KV cache and its last hidden states ([tokens, hidden])."""
        out = self.base(input_ids=prefix[None], use_cache=True, **image_inputs)
        return _cache_of(out), out.last_hidden_state[0]

    def extend(self, cache, input_ids, attention_mask):
        base = self.base
        return base(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **_with_cache(base, cache)
        ).last_hidden_state


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
        self.pattern = (
            None if fmt.marker else label_pattern(self.tokenizer, fmt.template.header("assistant"), fmt.good_token)
        )

    def logits(self, inputs: dict):
        return self.model(**inputs).logits.float()

    def render(self, question: str, steps: list[str], n_images: int) -> str:
        return self.fmt.render(question, steps, n_images, image=INTERNVL_IMAGE + "\n")

    def images(self, paths: Sequence[str]):
        return internvl_tiles(paths, self.image_size, self.max_num)

    def expand(self, text: str, counts: list[int]) -> str:
        """Each ``<image>`` in order -> <img> + <IMG_CONTEXT> x (num_image_token x its tiles) + </img>."""
        if text.count(INTERNVL_IMAGE) != len(counts):
            raise ValueError(
                f"{text.count(INTERNVL_IMAGE)} image placeholders for {len(counts)} images "
                f"(does the question contain {INTERNVL_IMAGE!r}?)"
            )
        for n in counts:
            text = text.replace(INTERNVL_IMAGE, IMG_START + IMG_CONTEXT * self.num_image_token * n + IMG_END, 1)
        return text

    def encode(self, texts: list[str], images) -> dict:
        torch = self._torch
        tiles, counts = images if images else ([], [])
        enc = self.tokenizer(
            [self.expand(t, counts) for t in texts], return_tensors="pt", padding=True, padding_side="right"
        )
        dtype = next(self.model.parameters()).dtype
        if tiles:
            pixel_values = torch.cat([torch.cat(tiles)] * len(texts))
            flags = torch.ones(pixel_values.shape[0], 1, dtype=torch.long)
        else:  # no image: one blank tile that the model drops (image_flags 0), as generate_steps_with_soft_score does
            pixel_values = torch.zeros(1, 3, self.image_size, self.image_size)
            flags = torch.zeros(1, 1, dtype=torch.long)
        device = self.model.device
        return {
            "input_ids": enc["input_ids"].to(device),
            "attention_mask": enc["attention_mask"].to(device),
            "pixel_values": pixel_values.to(device, dtype),
            "image_flags": flags.to(device),
        }

    # -- shared prefix: ``language_model`` (its decoder, then its head), fed as InternVLChatModel.forward feeds it

    def can_share(self) -> str | None:
        return None

    @property
    def image_token_id(self) -> int:
        return self.context_id

    @property
    def head(self):
        return self.model.language_model.get_output_embeddings()

    def split(self, texts: list[str], images) -> tuple[list[list[int]], dict]:
        tiles, counts = images if images else ([], [])
        return self.tokenizer([self.expand(t, counts) for t in texts])["input_ids"], {"tiles": tiles}

    def prefill(self, prefix, image_inputs: dict):
        """The prefix's KV cache and last hidden states. As in ``InternVLChatModel.forward`` (InternVL
        ``internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py``): token embeddings with
        every <IMG_CONTEXT> position replaced, in order, by ``extract_feature``'s tile embeddings."""
        torch = self._torch
        lm, device = self.model.language_model, self.model.device
        prefix = prefix.to(device)
        embeds = lm.get_input_embeddings()(prefix[None])
        selected = prefix == self.context_id
        tiles = image_inputs["tiles"]
        vit = (
            self.model.extract_feature(torch.cat(tiles).to(device, embeds.dtype)).reshape(-1, embeds.shape[-1])
            if tiles
            else embeds[0, :0]
        )
        if vit.shape[0] != int(selected.sum()):
            raise ValueError(f"{int(selected.sum())} image tokens in the prefix for {vit.shape[0]} tile embeddings")
        embeds[0, selected] = vit.to(embeds.dtype)
        out = lm.get_decoder()(inputs_embeds=embeds, use_cache=True)
        return _cache_of(out), out.last_hidden_state[0]

    def extend(self, cache, input_ids, attention_mask):
        decoder = self.model.language_model.get_decoder()
        return decoder(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **_with_cache(decoder, cache)
        ).last_hidden_state


def tiles_per_image(format: str, max_num: int | None) -> int:
    """InternVL tiles per image: ``max_num`` if given, else the format's own, else VLMEvalKit's default."""
    return max_num or format_class(format).max_tiles or INTERNVL_MAX_TILES


class _TextInputs:
    """A text PRM with a classification head (``AutoModel``, its own code when ``auto_map`` names it, as its
    card loads it): the conversation through its tokenizer's chat template, no images."""

    def __init__(self, path: str, fmt: PRMFormat, device, dtype):
        self.fmt = fmt
        self.model, self.tokenizer = load_remote_code_model(path, device, dtype)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pattern = None
        self._told = False

    def render(self, question: str, steps: list[str], n_images: int) -> str:
        messages = self.fmt.text_messages(question, steps)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def images(self, paths: Sequence[str]):
        if paths and not self._told:
            log.warning("%s is a text PRM: the questions' images are not shown to it", self.fmt.name)
            self._told = True
        return None

    def encode(self, texts: list[str], images) -> dict:
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")
        return {k: v.to(self.model.device) for k, v in enc.items() if k in _TEXT_KEYS}

    def logits(self, inputs: dict):
        return self.model(**inputs)[0].float()

    def can_share(self) -> str | None:
        return "a text PRM with a classification head is scored in full"


class _PackageInputs:
    """A PRM whose model code is a package of its own (``PRMFormat.model_code``, e.g. URSA's ``ursa_model``),
    fed as that PRM's scoring code feeds it: its processor's chat template over plain-text contents, then the
    processor on the prompt and the images, one candidate per forward pass. The model merges each image
    token into many image features, so its head's output is longer than the prompt; ``logits`` maps it back
    to the prompt's positions (each image token widens the sequence by features - 1)."""

    #: Candidates per forward pass: the package's own merge of image features assumes one sequence.
    max_batch = 1

    def __init__(self, path: str, fmt: PRMFormat, device, dtype, classes: tuple[type, type]):
        self.fmt = fmt
        self.model, self.processor = load_package_model(path, classes, device, dtype)
        self.tokenizer = self.processor.tokenizer
        self.image_token_id = self.model.config.image_token_index
        self.pattern = None

    def render(self, question: str, steps: list[str], n_images: int) -> str:
        messages = self.fmt.text_messages(question, steps, n_images)
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def images(self, paths: Sequence[str]):
        return [self.fmt.load_image(p) for p in paths]

    def encode(self, texts: list[str], images) -> dict:
        if len(texts) != 1:
            raise ValueError(f"{self.fmt.name} scores one candidate per forward pass, got {len(texts)}")
        enc = self.processor(texts[0], list(images) if images else None, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        return {k: v.to(self.model.device, dtype if v.is_floating_point() else None) for k, v in enc.items()}

    def logits(self, inputs: dict):
        """The head's output at the prompt's own positions ([1, prompt tokens, outputs])."""
        import torch

        merged = self.model(**inputs).logits.float()
        ids = inputs["input_ids"]
        images = ids == self.image_token_id
        n_images = int(images.sum())
        if not n_images:
            return merged
        extra, rest = divmod(merged.shape[1] - ids.shape[1], n_images)
        if rest:
            raise ValueError(f"{merged.shape[1]} outputs for {ids.shape[1]} tokens and {n_images} images")
        # a token's place in the merged sequence: its own index plus (features - 1) per image token before it
        before = torch.cumsum(images.long(), dim=1) - images.long()
        where = (torch.arange(ids.shape[1], device=ids.device) + extra * before).unsqueeze(-1)
        return merged.gather(1, where.expand(-1, -1, merged.shape[-1]))

    def can_share(self) -> str | None:
        return f"the {self.fmt.name} model merges image features inside its forward; scored in full"


def checkpoint_format(path: str, format: str | None) -> str:
    """``format`` if given, else the one the checkpoint's ``config.json`` names (``detect_format``), else the
    default. A checkpoint whose config cannot be read (a hub id not cached) gets the default."""
    if format:
        return format
    try:
        config = checkpoint_config(path)
    except (OSError, ValueError):
        return DEFAULT_FORMAT
    return detect_format(config) or DEFAULT_FORMAT


def checkpoint_id(path: str) -> str:
    """A checkpoint as a scorer identity names it: a tiny model with its recipe version (same
    weights wherever it is built), a local directory by its real path, a hub id as given."""
    if path.startswith("tiny:"):
        from vlmeval_prm.tiny import RECIPE_VERSION

        return f"{path}@v{RECIPE_VERSION}"
    local = os.path.expanduser(path)
    return os.path.realpath(local) if os.path.isdir(local) else path


class TransformersPRM(PRMScorer):
    """Scoring in-process, for HF-native and remote-code InternVL PRMs, in the PRM format ``format``
    (``prm.formats``; VisualPRM's by default; ``system_prompt``: the format's own unless given).

    Candidates of one question are batched (``batch_size`` at a time, one forward pass per batch);
    a batch that fails is retried one candidate at a time so one bad candidate cannot sink the
    others. ``trust_remote_code``: None (default) runs a checkpoint's own modelling code when its
    ``config.json`` names it (``auto_map``), False refuses such a checkpoint. ``max_num``: InternVL
    tiles per image (remote-code checkpoints; default: the format's, else 12). ``template``: a name in
    ``conversation.TEMPLATES`` or a dict of ``ChatTemplate`` fields, for a remote-code checkpoint whose
    ``config.template`` is not one we know; an HF-native checkpoint always uses its own chat template.
    ``share_prefix``: prefill the prefix the candidates share once (see the module docstring); False scores
    every candidate in full. ``kv_budget_mb``: memory the expanded KV caches of one shared-prefix batch may take.
    ``format``: None takes the one the checkpoint's ``config.json`` names, else VisualPRM's. ``code``: the
    module holding the model package of a format that loads one (URSA's ``ursa_model`` by default).
    """

    concurrent = False  # one model in this process

    def __init__(
        self,
        path: str,
        format: str | None = None,
        system_prompt: str | None = FORMAT_DEFAULT,
        template: str | dict | None = None,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool | None = None,
        attn_implementation: str | None = None,
        max_num: int | None = None,
        share_prefix: bool = True,
        kv_budget_mb: float = KV_BUDGET_MB,
        code: str | None = None,
    ):
        import torch

        if batch_size < 1 or kv_budget_mb <= 0:
            raise ValueError(f"batch_size must be >= 1 and kv_budget_mb > 0, got {batch_size} and {kv_budget_mb}")
        self._torch = torch
        self.identity = f"transformers:{path}"
        self.kv_budget = kv_budget_mb * 2**20
        config = checkpoint_config(path)
        if not format and (format := detect_format(config)):
            log.info("%s: scoring in the %s format (its config.json names it)", path, format)
        format = format or DEFAULT_FORMAT
        package = package_classes(path, format, format_class(format).model_code, code)
        if package:
            self.fmt = build_format(format, system_prompt=system_prompt)
            self.inputs = _PackageInputs(path, self.fmt, device, dtype, package)
        elif format_class(format).text_only:
            if template is not None:
                raise ValueError(f"{path} is rendered with its own chat template; drop the template option")
            self.fmt = build_format(format, system_prompt=system_prompt)
            self.inputs = _TextInputs(path, self.fmt, device, dtype)
        elif uses_remote_code(config):
            if trust_remote_code is False:
                raise ValueError(
                    f"{path} needs its own modelling code ({config.get('auto_map')}); "
                    "run with trust_remote_code=True (or leave it unset) to load it"
                )
            name = template if template is not None else config.get("template")
            max_num = tiles_per_image(format, max_num)
            log.info(
                "loading %s with its own modelling code (trust_remote_code; %s template, %d tiles per image)",
                path,
                name,
                max_num,
            )
            self.fmt = build_format(format, system_prompt=system_prompt, template=chat_template(name))
            self.inputs = _InternVLRemoteInputs(path, self.fmt, device, dtype, max_num)
        else:
            if template is not None:
                raise ValueError(
                    f"{path} is rendered with its own chat template; the template option applies "
                    "to remote-code checkpoints and LMDeploy /generate prompts only"
                )
            self.fmt = build_format(format, system_prompt=system_prompt)
            self.inputs = _NativeInputs(path, self.fmt, device, dtype, trust_remote_code, attn_implementation)
        self.model, self.tokenizer = self.inputs.model, self.inputs.tokenizer
        self.batch_size = min(batch_size, getattr(self.inputs, "max_batch", batch_size))
        self.good_id, self.bad_id = self.fmt.label_ids(self.tokenizer) or (None, None)
        self.marker_id = self.fmt.marker_id(self.tokenizer) if self.fmt.marker else None
        self.max_length = getattr(self.tokenizer, "model_max_length", None)
        why_not = self.inputs.can_share() if share_prefix else None
        if why_not:
            log.info("%s: scoring candidates without a shared prefix (%s)", path, why_not)
        self.share_prefix = share_prefix and not why_not

    @classmethod
    def identity_of(cls, path: str, options: dict) -> dict:
        """What this PRM's scores depend on, read without loading it: the checkpoint
        (``checkpoint_id``), what it is shown (system prompt, labels, a given template; None: the
        checkpoint's own), the tiles per image and the dtype of the forward pass. Not batch_size,
        device, attn_implementation, share_prefix or kv_budget_mb: they change speed, and scores only
        to float rounding."""
        template, format = options["template"], checkpoint_format(path, options["format"])
        return {
            "backend": "transformers",
            "checkpoint": checkpoint_id(path),
            "format": {
                **build_format(format, system_prompt=options["system_prompt"]).identity(),
                "template": asdict(chat_template(template)) if template is not None else None,
            },
            "max_num": tiles_per_image(format, options["max_num"]),
            "dtype": str(_device_dtype(options["device"], options["dtype"])[1]).removeprefix("torch."),
        }

    def read_positions(self, input_ids: Sequence[int]) -> list[int]:
        """The positions whose logits hold the steps' scores: the format's marker token after each step
        (MM-PRM's ``<prm>``), else the position before each assistant label (it predicts the label)."""
        if self.marker_id is not None:
            return [i for i, t in enumerate(input_ids) if t == self.marker_id]
        return [p - 1 for p in self.placeholder_positions(input_ids)]

    def placeholder_positions(self, input_ids: Sequence[int]) -> list[int]:
        """Positions of every assistant "+" placeholder (the last token of each header + label match)."""
        p, ids = self.inputs.pattern, list(input_ids)
        return [i + len(p) - 1 for i in range(len(ids) - len(p) + 1) if ids[i : i + len(p)] == p]

    def render(self, question: str, steps: list[str], n_images: int) -> str:
        """The conversation text the model sees (images as their placeholders, not yet expanded)."""
        return self.inputs.render(question, steps, n_images)

    def score(
        self, question: str, images: Sequence[str], candidates: Sequence[Sequence[str]], mode: str = "step"
    ) -> list[StepScores]:
        steps_list, results = prepare(candidates, mode)
        todo = [i for i, r in enumerate(results) if r is None]
        try:
            loaded = self.inputs.images(images)
        except ValueError as exc:
            return [r or failed(steps_list[i], str(exc)) for i, r in enumerate(results)]
        if self.share_prefix and len(todo) > 1:
            try:
                shared = self._score_shared(question, loaded, len(images), [steps_list[i] for i in todo])
            except Exception as exc:  # e.g. out of memory in the prefill: the unshared path records what fails
                log.warning("shared-prefix scoring failed (%s); scoring each candidate in full", exc)
                shared = [None] * len(todo)
            for i, res in zip(todo, shared):
                results[i] = res
            todo = [i for i in todo if results[i] is None]
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            try:
                scored = self._forward(question, loaded, len(images), [steps_list[i] for i in batch])
            except Exception as exc:  # isolate the candidate that broke the batch
                log.warning("PRM batch failed (%s); scoring its candidates one by one", exc)
                scored = []
                for i in batch:
                    try:
                        scored += self._forward(question, loaded, len(images), [steps_list[i]])
                    except Exception as one_exc:
                        scored.append(
                            failed(
                                steps_list[i],
                                f"PRM forward failed: {one_exc}",
                                transient=isinstance(one_exc, self._torch.OutOfMemoryError),
                            )
                        )
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
            logits = self.inputs.logits(inputs)
        bump("prm_forward_passes")
        bump("prm_sequences", len(batch))
        bump("prm_prefill_tokens", int(sum(lengths)))
        out = []
        for row, steps in enumerate(batch):
            pos = self.read_positions(inputs["input_ids"][row].tolist())
            if len(pos) != len(steps):
                out.append(failed(steps, f"found {len(pos)} score placeholders for {len(steps)} steps"))
                continue
            out.append(StepScores(steps=steps, scores=self.fmt.probability(logits[row, pos], self._labels()).tolist()))
        return out

    def _score_shared(self, question: str, images, n_images: int, batch: list[list[str]]) -> list[StepScores | None]:
        """Score ``batch`` from one prefill of the prefix its candidates share. None marks a candidate
        left to the unshared path (the prefix cannot serve it, or its suffix batch failed)."""
        torch = self._torch
        rows, image_inputs = self.inputs.split([self.render(question, steps, n_images) for steps in batch], images)
        out: list[StepScores | None] = [None] * len(batch)
        reads: dict[int, list[int]] = {}  # candidate -> positions whose logits predict its "+" placeholders
        for i, (steps, ids) in enumerate(zip(batch, rows)):
            if self.max_length and len(ids) > self.max_length:
                out[i] = failed(steps, f"context length exceeded: {len(ids)} > {self.max_length} tokens")
                continue
            pos = self.read_positions(ids)
            if len(pos) != len(steps):
                out[i] = failed(steps, f"found {len(pos)} score placeholders for {len(steps)} steps")
                continue
            reads[i] = pos
        if len(reads) < 2:
            return out
        # every token the candidates share; the image tokens must all be in it
        prefix = common_prefix_length([rows[i] for i in reads])
        image_token = self.inputs.image_token_id
        shareable = [i for i in reads if prefix > 0 and image_token not in rows[i][prefix:]]
        if len(shareable) < 2:
            return out
        with torch.inference_mode():
            cache, hidden = self.inputs.prefill(
                torch.tensor(rows[shareable[0]][:prefix], device=self.model.device), image_inputs
            )
            # steps read inside the prefix (candidates that share whole steps) are scored from it, once
            early = sorted({r for i in shareable for r in reads[i] if r < prefix})
            shared_scores = dict(zip(early, self._p_good(hidden[early]))) if early else {}
        bump("prm_forward_passes")
        bump("prm_prefill_tokens", prefix)
        late = {i: [r for r in reads[i] if r >= prefix] for i in shareable}
        per_row_token = cache_bytes(cache) / prefix
        order = sorted((i for i in shareable if late[i]), key=lambda i: len(rows[i]), reverse=True)  # less padding
        extended: dict[int, list[float]] = {i: [] for i in shareable if not late[i]}  # scored by the prefix alone
        bump("prm_sequences", len(extended))
        while order:
            size = max(1, min(self.batch_size, int(self.kv_budget // (per_row_token * len(rows[order[0]])))))
            chunk, order = order[:size], order[size:]
            try:
                values = self._extend(cache, prefix, [rows[i] for i in chunk], [late[i] for i in chunk])
                extended.update(zip(chunk, values))
            except Exception as exc:  # left to the unshared path, which isolates the candidate that broke it
                log.warning("shared-prefix batch of %d candidates failed (%s); scoring them in full", len(chunk), exc)
        for i, values in extended.items():
            out[i] = StepScores(steps=batch[i], scores=[shared_scores[r] for r in reads[i] if r < prefix] + values)
        return out

    def _labels(self) -> tuple[int, int] | None:
        return None if self.fmt.head else (self.good_id, self.bad_id)

    def _p_good(self, hidden) -> list[float]:
        """Step scores from last hidden states: the head on those rows only, read as the format says."""
        return self.fmt.probability(self.inputs.head(hidden), self._labels()).tolist()

    def _extend(self, cache, prefix: int, rows: list[list[int]], reads: list[list[int]]) -> list[list[float]]:
        """One forward of the candidates' own tokens (right-padded) over the expanded prefix cache.
        P(+) at the read positions (all past the prefix), per candidate."""
        torch = self._torch
        width = max(len(r) for r in rows) - prefix
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), prefix + width, dtype=torch.long)
        mask[:, :prefix] = 1
        for j, row in enumerate(rows):
            ids[j, : len(row) - prefix] = torch.tensor(row[prefix:])
            mask[j, prefix : len(row)] = 1
        device = self.model.device
        with torch.inference_mode():
            hidden = self.inputs.extend(expand_cache(cache, len(rows)), ids.to(device), mask.to(device))
            values = self._p_good(torch.cat([hidden[j, [p - prefix for p in read]] for j, read in enumerate(reads)]))
        bump("prm_forward_passes")
        bump("prm_sequences", len(rows))
        bump("prm_prefill_tokens", sum(len(r) - prefix for r in rows))
        ends = list(itertools.accumulate(len(read) for read in reads))
        return [values[end - len(read) : end] for end, read in zip(ends, reads)]
