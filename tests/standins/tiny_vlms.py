"""Tiny random-weight checkpoints of HF-native VLM architectures, built offline, for running
VLMEvalKit's own wrapper classes (Qwen2VLChat, LLaVA_OneVision_HF, ...) on CPU.

Each builder writes a directory that the wrapper loads with ``from_pretrained`` like a hub
checkpoint: config, random weights (seeded), a byte-level BPE tokenizer trained here on a small
corpus (as ``vlmeval_prm.tiny`` does for the InternVL demo models) with the family's special tokens,
and the family's real processor classes. The generation config asks for at least ``MIN_NEW``
tokens, so a random model never answers with an empty string. Built once per cache directory.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MIN_NEW = 4
BPE_VOCAB = 400
IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}{{- IMAGE -}}"
    "{%- elif part['type'] == 'video' -%}{{- VIDEO -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def chat_template(image: str, video: str = "") -> str:
    return CHATML.replace("IMAGE", repr(image)).replace("VIDEO", repr(video))


def _corpus() -> list[str]:
    rng = random.Random(0)
    words = (
        "the answer is step first next then finally area angle triangle circle radius length side value "
        "image shows question number sum option because each line point graph"
    ).split()
    return [
        f"Step {rng.randint(1, 9)}: {' '.join(rng.choice(words) for _ in range(6))}.\n\n"
        f"{rng.randint(0, 99)} + {rng.randint(0, 99)}\n\nThe answer is {rng.choice('ABCD')}"
        for _ in range(400)
    ]


def bpe_tokenizer(special: list[str], **extra):
    """A Qwen2-style byte-level BPE with ``special`` tokens (ChatML ones first)."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from vlmeval_prm.tiny import qwen2_tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.train_from_iterator(
        _corpus(),
        trainer=trainers.BpeTrainer(
            vocab_size=BPE_VOCAB, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    import json

    vocab = bpe.get_vocab()
    merges = [" ".join(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokens = [EOT, IM_START, IM_END, *[t for t in special if t not in (EOT, IM_START, IM_END)]]
    vocab.update({tok: len(vocab) + i for i, tok in enumerate(tokens)})
    tok = qwen2_tokenizer(
        vocab, merges, unk_token=None, eos_token=IM_END, pad_token=EOT, model_max_length=8192, **extra
    )
    tok.add_tokens([AddedToken(t, special=True) for t in tokens])
    return tok


def _rope(parameters: dict) -> dict:
    """RoPE settings under the name the installed transformers reads: ``rope_parameters`` on 5.x,
    ``rope_scaling`` (with ``rope_theta`` beside it) on 4.57."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return {"rope_parameters": parameters}
    return {"rope_scaling": parameters, "rope_theta": parameters["rope_theta"]}


def _seeded(model, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if "norm" in name or "ln" in name else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / max(p.shape[-1], 1) ** 0.5)


def _finish(model, tokenizer, processor, out: Path, seed: int) -> None:
    _seeded(model, seed)
    cfg = model.generation_config
    cfg.eos_token_id, cfg.pad_token_id = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.pad_token_id
    cfg.min_new_tokens, cfg.do_sample = MIN_NEW, False
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _text(cls, tokenizer, **kw):
    return cls(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **kw,
    )


# -- Qwen2-VL (Qwen2VLChat) -------------------------------------------------------------------------


def build_qwen2_vl(out: Path) -> None:
    """Qwen2VLForConditionalGeneration; 56 px images -> 4x4 patches of 14 -> 4 tokens after 2x2 merge."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig

    vs, ve, ip, vp = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
    tok = bpe_tokenizer([vs, ve, ip, vp])
    ids = tok.convert_tokens_to_ids
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text = _text(Qwen2VLTextConfig, tok, **_rope(rope))
    vision = Qwen2VLVisionConfig(
        depth=1,
        embed_dim=32,
        hidden_size=64,
        num_heads=2,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2VLConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_id=ids(ip),
        video_token_id=ids(vp),
        vision_start_token_id=ids(vs),
        vision_end_token_id=ids(ve),
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    pixels = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tok,
        chat_template=chat_template(f"{vs}{ip}{ve}", f"{vs}{vp}{ve}"),
    )
    _finish(Qwen2VLForConditionalGeneration(config).float().eval(), tok, processor, out, seed=11)


# -- LLaVA-OneVision (LLaVA_OneVision_HF) ------------------------------------------------------------


def build_llava_onevision(out: Path) -> None:
    """LlavaOnevisionForConditionalGeneration with a SigLIP tower on 28 px images (2x2 patches of 14),
    one anyres grid point, Qwen2 text model. The wrapper puts ``<image>`` in the text itself."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    image, video = "<image>", "<video>"
    tok = bpe_tokenizer([image, video])
    ids = tok.convert_tokens_to_ids
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    grid = [[28, 28]]
    config = LlavaOnevisionConfig(
        text_config=_text(Qwen2Config, tok).to_dict(),
        vision_config=vision.to_dict(),
        image_token_index=ids(image),
        video_token_index=ids(video),
        image_grid_pinpoints=grid,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=False,
    )
    size = {"height": 28, "width": 28}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=grid),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tok,
        num_image_tokens=4,
        vision_feature_select_strategy="full",
        chat_template=chat_template(image, video),
    )
    _finish(LlavaOnevisionForConditionalGeneration(config).float().eval(), tok, processor, out, seed=12)


# -- Qwen3-VL (Qwen3VLChat) ------------------------------------------------------------------------


def build_qwen3_vl(out: Path) -> None:
    """Qwen3VLForConditionalGeneration; 64 px images -> 4x4 patches of 16 -> 4 tokens after 2x2 merge."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    vs, ve, ip, vp = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
    tok = bpe_tokenizer([vs, ve, ip, vp])
    ids = tok.convert_tokens_to_ids
    text = {
        **_text(dict, tok),
        "head_dim": 16,
        "model_type": "qwen3_vl_text",
        **_rope({"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
    }
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=64,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0],
    )
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids(ip),
        video_token_id=ids(vp),
        vision_start_token_id=ids(vs),
        vision_end_token_id=ids(ve),
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    pixels = {"size": {"shortest_edge": 64 * 64, "longest_edge": 64 * 64}, "patch_size": 16}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels, merge_size=2),
        video_processor=Qwen3VLVideoProcessor(**pixels),
        tokenizer=tok,
        chat_template=chat_template(f"{vs}{ip}{ve}", f"{vs}{vp}{ve}"),
    )
    _finish(Qwen3VLForConditionalGeneration(config).float().eval(), tok, processor, out, seed=13)


# -- PaliGemma (PaliGemma) ------------------------------------------------------------------------


def build_paligemma(out: Path) -> None:
    """PaliGemmaForConditionalGeneration: SigLIP on 28 px images (4 image tokens), Gemma text model.
    The processor adds PaliGemma's ``<loc>``/``<seg>`` tokens to the tokenizer, so the text model's
    vocabulary is sized after it."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    tok = bpe_tokenizer(["<bos>", "<image>"], bos_token="<bos>", extra_special_tokens={"image_token": "<image>"})
    images = SiglipImageProcessor(size={"height": 28, "width": 28})
    images.image_seq_length = 4
    processor = PaliGemmaProcessor(image_processor=images, tokenizer=tok)
    text = _text(GemmaConfig, tok, head_dim=16)
    text.vocab_size = len(tok)
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=64,
    )
    config = PaliGemmaConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=64,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        hidden_size=64,
    )
    _finish(PaliGemmaForConditionalGeneration(config).float().eval(), tok, processor, out, seed=14)


# -- LFM2-VL (LFM2VL) ------------------------------------------------------------------------------


def build_lfm2_vl(out: Path) -> None:
    """Lfm2VlForConditionalGeneration: SigLIP2 (patch 16) and an LFM2 text model; the processor's own
    tiling and resizing, with small token budgets."""
    from transformers import (
        Lfm2Config,
        Lfm2VlConfig,
        Lfm2VlForConditionalGeneration,
        Lfm2VlImageProcessor,
        Lfm2VlProcessor,
        Siglip2VisionConfig,
    )

    image = "<image>"
    tok = bpe_tokenizer(
        [image, "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>"], extra_special_tokens={"image_token": image}
    )
    text = Lfm2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        layer_types=["conv", "full_attention"],
        eos_token_id=tok.convert_tokens_to_ids(IM_END),
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    vision = Siglip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=16, num_patches=64
    )
    config = Lfm2VlConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_id=tok.convert_tokens_to_ids(image),
        projector_hidden_size=64,
        tie_word_embeddings=False,
    )
    images = Lfm2VlImageProcessor(
        min_image_tokens=4,
        max_image_tokens=16,
        do_image_splitting=False,
        max_num_patches=64,
        encoder_patch_size=16,
        downsample_factor=2,
    )
    processor = Lfm2VlProcessor(image_processor=images, tokenizer=tok, chat_template=chat_template(image))
    _finish(Lfm2VlForConditionalGeneration(config).float().eval(), tok, processor, out, seed=16)


# -- Gemma 3 (Gemma3) ------------------------------------------------------------------------------


def build_gemma3(out: Path) -> None:
    """Gemma3ForConditionalGeneration: SigLIP on 28 px images, 4 tokens per image, Gemma 3 text model."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    boi, eoi, image = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
    tok = bpe_tokenizer(
        ["<bos>", boi, eoi, image],
        bos_token="<bos>",
        extra_special_tokens={"boi_token": boi, "eoi_token": eoi, "image_token": image},
    )
    ids = tok.convert_tokens_to_ids
    text = _text(Gemma3TextConfig, tok, head_dim=16, sliding_window=64)
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        boi_token_index=ids(boi),
        eoi_token_index=ids(eoi),
        image_token_index=ids(image),
        tie_word_embeddings=False,
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 28, "width": 28}),
        tokenizer=tok,
        image_seq_length=4,
        chat_template=chat_template(boi),
    )
    _finish(Gemma3ForConditionalGeneration(config).float().eval(), tok, processor, out, seed=17)


# -- Qwen2.5-VL (VL-PRM's architecture) --------------------------------------------------------------


def build_qwen2_5_vl(out: Path) -> None:
    """Qwen2_5_VLForConditionalGeneration (window attention in the vision tower, one full-attention block),
    patch 14 and 2x2 merge as the real checkpoints (28 px per image token); the processor keeps the real
    defaults (min 3136, max 12845056 pixels), so a PRM format's own pixel bounds decide the resize."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLVisionConfig,
    )

    vs, ve, ip, vp = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
    tok = bpe_tokenizer([vs, ve, ip, vp])
    ids = tok.convert_tokens_to_ids
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text = _text(Qwen2_5_VLTextConfig, tok, **_rope(rope))
    vision = Qwen2_5_VLVisionConfig(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        out_hidden_size=64,
        fullatt_block_indexes=[1],
    )
    config = Qwen2_5_VLConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_id=ids(ip),
        video_token_id=ids(vp),
        vision_start_token_id=ids(vs),
        vision_end_token_id=ids(ve),
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tok,
        chat_template=chat_template(f"{vs}{ip}{ve}", f"{vs}{vp}{ve}"),
    )
    _finish(Qwen2_5_VLForConditionalGeneration(config).float().eval(), tok, processor, out, seed=17)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "llava_onevision": build_llava_onevision,
    "qwen3_vl": build_qwen3_vl,
    "paligemma": build_paligemma,
    "gemma3": build_gemma3,
    "lfm2_vl": build_lfm2_vl,
}


def tiny_vlm(kind: str, cache: str | os.PathLike | None = None) -> str:
    """Directory of the tiny ``kind`` checkpoint, built on first use (atomically renamed into place)."""
    root = Path(cache or Path(tempfile.gettempdir()) / "vlmeval_prm_tiny_vlms")
    final = root / kind
    if final.is_dir():
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=root))
    try:
        BUILDERS[kind](tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)
