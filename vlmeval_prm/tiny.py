"""Tiny random-weight InternVL models (policy and PRM) built offline, for the CPU demo and the tests.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a built-in corpus, and
every weight is drawn from a generator seeded by (role, parameter name), so every build of a role
gives the same weights. The result is saved with ``save_pretrained`` so that
``AutoModelForImageTextToText`` / ``AutoProcessor`` load it like a real checkpoint. The classes
are transformers' HF-native InternVL (Qwen2 text model) because the real PRM, VisualPRM-8B, is an
InternVL model.

Layout: ``<cache>/<role>-v<RECIPE_VERSION>/``. A model is built in a temporary sibling directory
and renamed into place, so concurrent processes never see half a model and a finished one is
never rebuilt.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import zlib
from pathlib import Path

from vlmeval_prm.constants import HOME_ENV, STEP_SEPARATOR

TINY_ROLES = ("policy", "prm")

#: Bump whenever anything below changes what gets written.
RECIPE_VERSION = 3

_ROLE_SEEDS = {"policy": 1001, "prm": 2002}

#: Every image becomes one 56 px tile (resized, no dynamic tiling) of 14 px patches (4x4), pixel
#: shuffle 0.5 -> 4 context tokens; with <img> and </img> an image costs 6 tokens.
IMAGE_SIZE, PATCH_SIZE = 56, 14
IMAGE_SEQ_LENGTH = (IMAGE_SIZE // PATCH_SIZE) ** 2 // 4
MAX_LENGTH = 8192
#: Pass as ``attn_implementation`` when loading: with "eager" one forward over a conversation gives
#: exactly the logits of a forward over any prefix on CPU; transformers does not save this choice.
ATTN_IMPLEMENTATION = "eager"

BPE_VOCAB_SIZE = 400  # 256 byte tokens + merges; the special tokens follow

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
IMG_START, IMG_END, IMG_CONTEXT, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT, VIDEO)
#: The tokenizer attributes InternVL's processor reads its image markers from.
NAMED_SPECIAL_TOKENS = {
    "start_image_token": IMG_START,
    "end_image_token": IMG_END,
    "context_image_token": IMG_CONTEXT,
    "video_token": VIDEO,
}

# ChatML. Content is a string or a list of parts; an image part becomes IMG_CONTEXT + newline, which
# the InternVL processor expands to <img> + IMAGE_SEQ_LENGTH x IMG_CONTEXT + </img>.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<IMG_CONTEXT>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Random weights give near-uniform next-token distributions. A constant "bias" coordinate in the
# text residual stream (no layer writes to it) turns lm_head column BIAS_DIM into a per-token bias:
# unprintable bytes and the image/control tokens are pushed down so samples read as text,
# blank-line tokens are pushed up so samples have several steps, and the eos a little down.
BIAS_DIM, BIAS_VALUE = 0, 4.0
NORMED_BIAS = 2.2  # typical value of the bias coordinate after the final RMSNorm (measured)
# Sharper text attention makes outputs depend on the context, not only on the last token: without
# it every PRM step score (always read after the same "assistant\n" header) is nearly the same.
ATTENTION_GAIN = 2.0
SUPPRESS_LOGIT, BLANK_LINE_LOGIT = -12.0, 2.0
EOS_LOGIT = -2.0  # most samples run to max_new_tokens; an early stop stays possible
_PLAIN_CHARS = " \n.,:=+-*/()?"

_WORDS = (
    "the answer is so we get step first next then finally area angle triangle circle radius "
    "length side value total image shows question number sum of and a to find equals therefore "
    "correct option because each line point graph x y"
).split()


def tiny_model_path(role: str = "policy", cache_dir: str | None = None) -> str:
    """Build (first call) or reuse the cached tiny model for ``role``; return its directory."""
    if role not in TINY_ROLES:
        raise ValueError(f"unknown tiny model role {role!r}; expected one of {TINY_ROLES}")
    root = Path(cache_dir).expanduser() if cache_dir else _default_cache_dir()
    final = root / f"{role}-v{RECIPE_VERSION}"
    if final.is_dir():
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=root))
    try:
        _build(role, tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race with another builder: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def _default_cache_dir() -> Path:
    home = os.environ.get(HOME_ENV)
    return Path(home) / "tiny" if home else Path.home() / ".cache" / "vlmeval_prm" / "tiny"


def _corpus() -> list[str]:
    """Short step-by-step math/English texts with blank lines between steps (seeded, fixed)."""
    rng = random.Random(0)
    texts = []
    for _ in range(600):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op, val = rng.choice([("+", a + b), ("-", a - b), ("*", a * b)])
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9)))
        texts.append(
            f"Step {rng.randint(1, 9)}: {words.capitalize()}.\n\n{a} {op} {b} = {val}\n\n"
            f"The answer is {rng.choice('ABCD')}"
        )
    return texts


def _build_tokenizer(corpus: list[str] | None = None, vocab_size: int = BPE_VOCAB_SIZE):
    """A Qwen2-style byte-level BPE trained on ``corpus`` (default ``_corpus``) plus the InternVL special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Same normalizer and pre-tokenizer as Qwen2Tokenizer, which rebuilds the pipeline on load.
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_corpus() if corpus is None else corpus, trainer=trainer)
    vocab = bpe.get_vocab()
    merges = [" ".join(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    vocab.update({tok: len(vocab) + i for i, tok in enumerate(SPECIAL_TOKENS)})
    tokenizer = qwen2_tokenizer(
        vocab,
        merges,
        unk_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=MAX_LENGTH,
        extra_special_tokens=NAMED_SPECIAL_TOKENS,
    )
    tokenizer.add_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    if "\u010a\u010a" not in vocab:  # "\n\n" in byte-level notation; steps are split on it
        raise RuntimeError("tiny tokenizer lacks a blank-line token; adjust the corpus")
    return tokenizer


def qwen2_tokenizer(vocab: dict[str, int], merges: list[str], **kwargs):
    """A Qwen2 tokenizer from a byte-level BPE's vocabulary and merges ("a b" strings), loaded from
    ``vocab.json``/``merges.txt`` as a real Qwen2 checkpoint is: the one constructor every supported
    transformers line shares (5.x also takes them in memory, 4.57 does not)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        Path(folder, "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return AutoTokenizer.from_pretrained(folder, tokenizer_type="qwen2", **kwargs)


def _build_processor(tokenizer):
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False, max_patches=1),
        video_processor=InternVLVideoProcessor(size=size),
        tokenizer=tokenizer,
        image_seq_length=IMAGE_SEQ_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )


def _config(tokenizer):
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_LENGTH,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = InternVLVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=IMAGE_SEQ_LENGTH,
        tie_word_embeddings=False,
    )


def _token_bias(tokenizer) -> list[float]:
    """Per-token logit offsets: see BIAS_DIM."""
    bias = [0.0] * len(tokenizer)
    for token, idx in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if token in SPECIAL_TOKENS:
            bias[idx] = EOS_LOGIT if token == IM_END else SUPPRESS_LOGIT
        elif STEP_SEPARATOR in text:
            bias[idx] = BLANK_LINE_LOGIT
        elif not all(c.isascii() and (c.isalnum() or c in _PLAIN_CHARS) for c in text):
            bias[idx] = SUPPRESS_LOGIT
    return bias


def _fill_weights(model, seed: int, token_bias: list[float]) -> None:
    """Overwrite every parameter from a generator seeded by (seed, name): independent of init order."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1:  # norm scales and layer-scale factors
                param.fill_(1.0)
            elif "embed_tokens" in name or "position_embeddings" in name or "cls_token" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
            else:  # fan-in scaling keeps every layer's contribution at the scale of its input
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)
        text = model.model.language_model
        text.embed_tokens.weight[:, BIAS_DIM] = BIAS_VALUE
        model.model.multi_modal_projector.linear_2.weight[BIAS_DIM] = 0.0
        model.model.multi_modal_projector.linear_2.bias[BIAS_DIM] = BIAS_VALUE
        for layer in text.layers:
            layer.self_attn.q_proj.weight.mul_(ATTENTION_GAIN)
            layer.self_attn.k_proj.weight.mul_(ATTENTION_GAIN)
            layer.self_attn.o_proj.weight[BIAS_DIM] = 0.0
            layer.mlp.down_proj.weight[BIAS_DIM] = 0.0
        model.lm_head.weight[:, BIAS_DIM] = torch.tensor(token_bias) / NORMED_BIAS


def _build(role: str, out: Path) -> None:
    import torch
    from transformers import InternVLForConditionalGeneration

    tokenizer = _build_tokenizer()
    processor = _build_processor(tokenizer)
    with torch.random.fork_rng(devices=[]):  # the constructor's throw-away init must not move the caller's RNG
        model = InternVLForConditionalGeneration(_config(tokenizer)).to(torch.float32).eval()
    _fill_weights(model, _ROLE_SEEDS[role], _token_bias(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json")


def _portable_tokenizer_config(path: Path) -> None:
    """Write the tokenizer's named special tokens (InternVL's ``start_image_token``...) in the mapping
    form every supported transformers line reads: 5.x saves them as top-level keys and an
    ``extra_special_tokens`` list, which 4.57 cannot load (it expects a mapping)."""
    config = json.loads(path.read_text())
    config["extra_special_tokens"] = NAMED_SPECIAL_TOKENS
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
