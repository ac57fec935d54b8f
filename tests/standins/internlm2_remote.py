"""A tiny random-weight remote-code checkpoint that stands in for VisualPRM-8B / InternVL2.5-8B.

Those checkpoints (an InternViT vision tower, an InternLM2 language model, ``auto_map`` to their own
``modeling_internvl_chat.py`` and ``modeling_internlm2.py``) cannot be downloaded here. The files
written below reproduce, in a few lines each, the patterns of InternVL's real modelling code that
decide whether transformers loads and runs it correctly (read from OpenGVLab/InternVL at commit
2410d1dbf208f0e799459aff9376e5747dbf41a2: ``internvl_chat/internvl/model/internlm2/modeling_internlm2.py``
and ``internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py``):

* RoPE buffers ``inv_freq``, ``cos_cached``, ``sin_cached`` registered with ``persistent=False`` in
  ``__init__`` (so not in the weights), with the dynamic-NTK class InternVL2.5-8B's config selects
  (``rope_scaling: {"type": "dynamic", "factor": 2.0}``);
* a remote ``_init_weights`` that touches only ``nn.Linear`` and ``nn.Embedding``;
* ``PreTrainedModel`` subclasses that do not inherit ``GenerationMixin``, with InternLM2's own
  ``prepare_inputs_for_generation`` and ``_reorder_cache``, and legacy tuple KV caches (a tuple of
  (key, value) per layer in and out, ``past_key_values`` keyword);
* ``InternVLChatModel``: ``num_image_token``, ``template``, ``img_context_token_id``,
  ``extract_feature`` (pixel shuffle + ``mlp1``), ``forward(pixel_values, input_ids, attention_mask,
  image_flags)``, and ``generate``/``chat`` calling ``self.language_model.generate(inputs_embeds=...)``.

Left out: flash attention, gradient checkpointing, LoRA, the real InternViT (here one patch
embedding and a norm), ``conversation.py`` (``chat`` renders the internvl2_5 ChatML template inline)
and InternLM2's sentencepiece tokenizer: in its place a byte-level ``Qwen2Tokenizer`` (token id =
byte value, no merges, then the ChatML and InternVL image tokens), written as plain vocab/merges
files that transformers 4.57 (slow and fast) and 5.x read alike and tokenise identically.

Weights come from a generator seeded by each parameter's name, so every build, on any transformers
line, writes the same bytes; they are saved with safetensors directly because transformers 5.x
``save_pretrained`` fails on InternLM2's list-valued ``_tied_weights_keys``.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

#: Vision stand-in: InternVL's 448 px tiles (VLMEvalKit's ``load_image`` default) cut into 112 px
#: patches (4x4), pixel shuffle 0.5 -> 4 tokens per tile (InternVL2.5-8B: 14 px patches, 256 tokens).
IMAGE_SIZE, PATCH_SIZE, NUM_IMAGE_TOKEN = 448, 112, 4
SEED = 2025

CONFIGURATION_INTERNLM2 = """
from transformers import PretrainedConfig


class InternLM2Config(PretrainedConfig):
    model_type = "internlm2"

    def __init__(self, vocab_size=103168, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048,
                 initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2, tie_word_embeddings=False, bias=True, rope_theta=10000, rope_scaling=None,
                 attn_implementation="eager", **kwargs):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.bias = bias
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.attn_implementation = attn_implementation or "eager"
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
"""

MODELING_INTERNLM2 = """
import math

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from .configuration_internlm2 import InternLM2Config

UNREPRODUCIBLE_BUFFER = False  # the test of refusal flips this: a buffer drawn at random in __init__


def _make_causal_mask(shape, dtype, device, past_key_values_length=0):
    bsz, tgt_len = shape
    mask = torch.full((tgt_len, tgt_len), torch.finfo(dtype).min, device=device)
    cond = torch.arange(tgt_len, device=device)
    mask.masked_fill_(cond < (cond + 1).view(tgt_len, 1), 0)
    mask = mask.to(dtype)
    if past_key_values_length > 0:
        mask = torch.cat([torch.zeros(tgt_len, past_key_values_length, dtype=dtype, device=device), mask], dim=-1)
    return mask[None, None].expand(bsz, 1, tgt_len, tgt_len + past_key_values_length)


def _expand_mask(mask, dtype, tgt_len):
    bsz, src_len = mask.size()
    inverted = 1.0 - mask[:, None, None, :].expand(bsz, 1, tgt_len, src_len).to(dtype)
    return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(dtype).min)


class InternLM2RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


class InternLM2RotaryEmbedding(nn.Module):
    def __init__(self, dim, max_position_embeddings=2048, base=10000, device=None):
        super().__init__()
        self.dim, self.max_position_embeddings, self.base = dim, max_position_embeddings, base
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2).float().to(device) / self.dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        if UNREPRODUCIBLE_BUFFER:
            self.register_buffer("jitter", torch.rand(4), persistent=False)
        self._set_cos_sin_cache(max_position_embeddings, self.inv_freq.device, torch.get_default_dtype())

    def _set_cos_sin_cache(self, seq_len, device, dtype):
        self.max_seq_len_cached = seq_len
        t = torch.arange(self.max_seq_len_cached, device=device).to(dtype=self.inv_freq.dtype)
        freqs = torch.einsum("i,j->ij", t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos().to(dtype), persistent=False)
        self.register_buffer("sin_cached", emb.sin().to(dtype), persistent=False)

    def forward(self, x, seq_len=None):
        if seq_len > self.max_seq_len_cached:
            self._set_cos_sin_cache(seq_len=seq_len, device=x.device, dtype=torch.float32)
        return self.cos_cached[:seq_len].to(dtype=x.dtype), self.sin_cached[:seq_len].to(dtype=x.dtype)


class InternLM2DynamicNTKScalingRotaryEmbedding(InternLM2RotaryEmbedding):
    def __init__(self, dim, max_position_embeddings=2048, base=10000, device=None, scaling_factor=1.0):
        self.scaling_factor = scaling_factor
        super().__init__(dim, max_position_embeddings, base, device)

    def _set_cos_sin_cache(self, seq_len, device, dtype):
        self.max_seq_len_cached = seq_len
        if seq_len > self.max_position_embeddings:
            base = self.base * (
                (self.scaling_factor * seq_len / self.max_position_embeddings) - (self.scaling_factor - 1)
            ) ** (self.dim / (self.dim - 2))
            inv_freq = 1.0 / (base ** (torch.arange(0, self.dim, 2).float().to(device) / self.dim))
            self.register_buffer("inv_freq", inv_freq, persistent=False)
        t = torch.arange(self.max_seq_len_cached, device=device).to(dtype=self.inv_freq.dtype)
        freqs = torch.einsum("i,j->ij", t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos().to(dtype), persistent=False)
        self.register_buffer("sin_cached", emb.sin().to(dtype), persistent=False)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids):
    cos, sin = cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class InternLM2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


def repeat_kv(hidden_states, n_rep):
    batch, heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None].expand(batch, heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, heads * n_rep, slen, head_dim)


class InternLM2Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.max_position_embeddings = config.max_position_embeddings
        self.wqkv = nn.Linear(self.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim,
                              bias=config.bias)
        self.wo = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=config.bias)
        self._init_rope()

    def _init_rope(self):
        if self.config.rope_scaling is None:
            self.rotary_emb = InternLM2RotaryEmbedding(
                self.head_dim, max_position_embeddings=self.max_position_embeddings, base=self.config.rope_theta)
        elif self.config.rope_scaling["type"] == "dynamic":
            self.rotary_emb = InternLM2DynamicNTKScalingRotaryEmbedding(
                self.head_dim, max_position_embeddings=self.max_position_embeddings, base=self.config.rope_theta,
                scaling_factor=self.config.rope_scaling["factor"])
        else:
            raise ValueError("only 'dynamic' rope scaling in this stand-in")
        return self.rotary_emb

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                output_attentions=False, use_cache=False, **kwargs):
        bsz, q_len, _ = hidden_states.size()
        gs = 2 + self.num_key_value_groups
        qkv = self.wqkv(hidden_states).view(bsz, q_len, -1, gs, self.head_dim)  # "b q (h gs d) -> b q h gs d"
        query_states = qkv[..., : self.num_key_value_groups, :].reshape(bsz, q_len, -1, self.head_dim)
        query_states = query_states.transpose(1, 2)
        key_states = qkv[..., -2, :].transpose(1, 2)
        value_states = qkv[..., -1, :].transpose(1, 2)

        kv_seq_len = key_states.shape[-2]
        if past_key_value is not None:
            kv_seq_len += past_key_value[0].shape[-2]
        cos, sin = self.rotary_emb(value_states, seq_len=kv_seq_len)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin, position_ids)
        if past_key_value is not None:
            key_states = torch.cat([past_key_value[0], key_states], dim=2)
            value_states = torch.cat([past_key_value[1], value_states], dim=2)
        past_key_value = (key_states, value_states) if use_cache else None

        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).reshape(bsz, q_len, self.hidden_size)
        return self.wo(attn_output), None, past_key_value


class InternLM2DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = InternLM2Attention(config)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                output_attentions=False, use_cache=False, **kwargs):
        residual = hidden_states
        hidden_states, _, present = self.attention(
            self.attention_norm(hidden_states), attention_mask=attention_mask, position_ids=position_ids,
            past_key_value=past_key_value, use_cache=use_cache)
        hidden_states = residual + hidden_states
        hidden_states = hidden_states + self.feed_forward(self.ffn_norm(hidden_states))
        return (hidden_states, present) if use_cache else (hidden_states,)


class InternLM2PreTrainedModel(PreTrainedModel):
    config_class = InternLM2Config
    base_model_prefix = "model"
    _no_split_modules = ["InternLM2DecoderLayer"]
    _skip_keys_device_placement = "past_key_values"

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()


class InternLM2Model(InternLM2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([InternLM2DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def set_input_embeddings(self, value):
        self.tok_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        batch_size, seq_length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        past_key_values_length = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        if position_ids is None:
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            position_ids = torch.arange(past_key_values_length, seq_length + past_key_values_length,
                                        dtype=torch.long, device=device)[None]
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones((batch_size, seq_length + past_key_values_length), dtype=torch.bool,
                                        device=inputs_embeds.device)
        mask = _expand_mask(attention_mask, inputs_embeds.dtype, tgt_len=seq_length).to(inputs_embeds.device)
        if seq_length > 1:
            mask = mask + _make_causal_mask((batch_size, seq_length), inputs_embeds.dtype, inputs_embeds.device,
                                            past_key_values_length)
        hidden_states = inputs_embeds
        next_cache = () if use_cache else None
        for idx, layer in enumerate(self.layers):
            out = layer(hidden_states, attention_mask=mask, position_ids=position_ids,
                        past_key_value=past_key_values[idx] if past_key_values is not None else None,
                        use_cache=use_cache)
            hidden_states = out[0]
            if use_cache:
                next_cache += (out[1],)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), past_key_values=next_cache)


class InternLM2ForCausalLM(InternLM2PreTrainedModel):
    _tied_weights_keys = ["output.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.vocab_size = config.vocab_size
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def set_input_embeddings(self, value):
        self.model.tok_embeddings = value

    def get_output_embeddings(self):
        return self.output

    def set_output_embeddings(self, new_embeddings):
        self.output = new_embeddings

    def get_decoder(self):
        return self.model

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache)
        logits = self.output(outputs[0]).float()
        return CausalLMOutputWithPast(logits=logits, past_key_values=outputs.past_key_values)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      inputs_embeds=None, **kwargs):
        if past_key_values is not None:
            past_length = past_key_values[0][0].shape[2]
            if input_ids.shape[1] > past_length:
                remove_prefix_length = past_length
            else:
                remove_prefix_length = input_ids.shape[1] - 1
            input_ids = input_ids[:, remove_prefix_length:]
        position_ids = kwargs.get("position_ids", None)
        if attention_mask is not None and position_ids is None:
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            if past_key_values:
                position_ids = position_ids[:, -input_ids.shape[1]:]
        if inputs_embeds is not None and past_key_values is None:
            model_inputs = {"inputs_embeds": inputs_embeds}
        else:
            model_inputs = {"input_ids": input_ids}
        model_inputs.update({"position_ids": position_ids, "past_key_values": past_key_values,
                             "use_cache": kwargs.get("use_cache"), "attention_mask": attention_mask})
        return model_inputs

    @staticmethod
    def _reorder_cache(past_key_values, beam_idx):
        return tuple(tuple(s.index_select(0, beam_idx.to(s.device)) for s in layer) for layer in past_key_values)
"""

CONFIGURATION_INTERNVL_CHAT = """
from transformers import PretrainedConfig

from .configuration_internlm2 import InternLM2Config


class InternVisionConfig(PretrainedConfig):
    model_type = "intern_vit_6b"

    def __init__(self, hidden_size=16, image_size=448, patch_size=112, layer_norm_eps=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.image_size, self.patch_size = hidden_size, image_size, patch_size
        self.layer_norm_eps = layer_norm_eps


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"
    is_composition = True

    def __init__(self, vision_config=None, llm_config=None, select_layer=-1, force_image_size=None,
                 downsample_ratio=0.5, template=None, ps_version="v1", **kwargs):
        super().__init__(**kwargs)
        self.vision_config = InternVisionConfig(**(vision_config or {}))
        llm_config = llm_config or {"architectures": ["InternLM2ForCausalLM"]}
        if llm_config["architectures"][0] != "InternLM2ForCausalLM":
            raise ValueError("this stand-in has an InternLM2 language model only")
        self.llm_config = InternLM2Config(**llm_config)
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.ps_version = ps_version
        self.hidden_size = self.llm_config.hidden_size
        self.tie_word_embeddings = False

    def to_dict(self):
        output = super().to_dict()
        output["vision_config"] = self.vision_config.to_dict()
        output["llm_config"] = self.llm_config.to_dict()
        return output
"""

MODELING_INTERNVL_CHAT = '''
import torch
from torch import nn
from transformers import GenerationConfig
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import PreTrainedModel

from .configuration_internvl_chat import InternVLChatConfig
from .modeling_internlm2 import InternLM2ForCausalLM

SYSTEM_MESSAGE = "You are InternVL, a multimodal large language model."


class InternVisionModel(nn.Module):
    """InternViT reduced to a patch embedding with class token, positions and one norm."""

    def __init__(self, config):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, config.hidden_size, config.patch_size, config.patch_size)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        patches = (config.image_size // config.patch_size) ** 2
        self.position_embedding = nn.Parameter(torch.zeros(1, patches + 1, config.hidden_size))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values, output_hidden_states=False, return_dict=True):
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1).to(patches.dtype)
        hidden = self.norm(torch.cat([cls, patches], dim=1) + self.position_embedding.to(patches.dtype))
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=(hidden,))


class InternVLChatModel(PreTrainedModel):
    config_class = InternVLChatConfig
    main_input_name = "pixel_values"
    base_model_prefix = "language_model"
    _no_split_modules = ["InternVisionModel", "InternLM2DecoderLayer"]

    def __init__(self, config, vision_model=None, language_model=None, use_flash_attn=True):
        super().__init__(config)
        image_size = config.force_image_size or config.vision_config.image_size
        patch_size = config.vision_config.patch_size
        self.patch_size = patch_size
        self.select_layer = config.select_layer
        self.template = config.template
        self.num_image_token = int((image_size // patch_size) ** 2 * (config.downsample_ratio ** 2))
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        config.llm_config.attn_implementation = "eager"
        self.vision_model = vision_model or InternVisionModel(config.vision_config)
        self.language_model = language_model or InternLM2ForCausalLM(config.llm_config)
        vit_hidden_size = config.vision_config.hidden_size * int(1 / self.downsample_ratio) ** 2
        llm_hidden_size = config.llm_config.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(vit_hidden_size), nn.Linear(vit_hidden_size, llm_hidden_size),
                                  nn.GELU(), nn.Linear(llm_hidden_size, llm_hidden_size))
        self.img_context_token_id = None
        self.system_message = SYSTEM_MESSAGE
        self.post_init()

    def forward(self, pixel_values, input_ids=None, attention_mask=None, position_ids=None, image_flags=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        image_flags = image_flags.squeeze(-1)
        input_embeds = self.language_model.get_input_embeddings()(input_ids).clone()
        vit_embeds = self.extract_feature(pixel_values)
        vit_embeds = vit_embeds[image_flags == 1]
        B, N, C = input_embeds.shape
        input_embeds = input_embeds.reshape(B * N, C)
        selected = input_ids.reshape(B * N) == self.img_context_token_id
        input_embeds[selected] = input_embeds[selected] * 0.0 + vit_embeds.reshape(-1, C)
        return self.language_model(inputs_embeds=input_embeds.reshape(B, N, C), attention_mask=attention_mask,
                                   position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache)

    def pixel_shuffle(self, x, scale_factor=0.5):
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * scale_factor), int(c / scale_factor)).permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
        if self.ps_version != "v1":
            x = x.permute(0, 2, 1, 3).contiguous()
        return x

    def extract_feature(self, pixel_values):
        vit_embeds = self.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state
        vit_embeds = vit_embeds[:, 1:, :]
        h = w = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
        vit_embeds = self.pixel_shuffle(vit_embeds, scale_factor=self.downsample_ratio)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        return self.mlp1(vit_embeds)

    def chat(self, tokenizer, pixel_values, question, generation_config, history=None, return_history=False,
             num_patches_list=None, IMG_START_TOKEN="<img>", IMG_END_TOKEN="</img>",
             IMG_CONTEXT_TOKEN="<IMG_CONTEXT>", verbose=False):
        if history is None and pixel_values is not None and "<image>" not in question:
            question = "<image>\\n" + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")  # internvl2_5's sep, stripped
        query = f"<|im_start|>system\\n{self.system_message}<|im_end|>\\n"
        for old_question, old_answer in history or []:
            query += f"<|im_start|>user\\n{old_question}<|im_end|>\\n<|im_start|>assistant\\n{old_answer}<|im_end|>\\n"
        query += f"<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n"
        for num_patches in num_patches_list:
            image_tokens = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * self.num_image_token * num_patches + IMG_END_TOKEN
            query = query.replace("<image>", image_tokens, 1)
        model_inputs = tokenizer(query, return_tensors="pt")
        generation_config["eos_token_id"] = eos_token_id
        output = self.generate(pixel_values=pixel_values, input_ids=model_inputs["input_ids"],
                               attention_mask=model_inputs["attention_mask"], **generation_config)
        response = tokenizer.batch_decode(output, skip_special_tokens=True)[0].split("<|im_end|>")[0].strip()
        history = (history or []) + [(question, response)]
        return (response, history) if return_history else response

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, visual_features=None,
                 generation_config=None, output_hidden_states=None, **generate_kwargs):
        assert self.img_context_token_id is not None
        input_embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            vit_embeds = visual_features if visual_features is not None else self.extract_feature(pixel_values)
            B, N, C = input_embeds.shape
            input_embeds = input_embeds.reshape(B * N, C)
            selected = input_ids.reshape(B * N) == self.img_context_token_id
            assert selected.sum() != 0
            input_embeds[selected] = vit_embeds.reshape(-1, C).to(input_embeds.device)
            input_embeds = input_embeds.reshape(B, N, C)
        return self.language_model.generate(inputs_embeds=input_embeds, attention_mask=attention_mask,
                                            generation_config=generation_config,
                                            output_hidden_states=output_hidden_states, use_cache=True,
                                            **generate_kwargs)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()
'''

FILES = {
    "configuration_internlm2.py": CONFIGURATION_INTERNLM2,
    "modeling_internlm2.py": MODELING_INTERNLM2,
    "configuration_internvl_chat.py": CONFIGURATION_INTERNVL_CHAT,
    "modeling_internvl_chat.py": MODELING_INTERNVL_CHAT,
}


def checkpoint_config(vocab_size: int, pad_token_id: int, eos_token_id: int) -> dict:
    """``config.json``: InternVL2.5-8B's layout (InternLM2 with dynamic NTK, ``internvl2_5`` template,
    pixel shuffle v2) at toy sizes."""
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "torch_dtype": "float32",
        "template": "internvl2_5",
        "force_image_size": IMAGE_SIZE,
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "vision_config": {"hidden_size": 16, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
        "llm_config": {
            "architectures": ["InternLM2ForCausalLM"],
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_theta": 1000000,
            "rope_scaling": {"type": "dynamic", "factor": 2.0},
            "pad_token_id": pad_token_id,
            "bos_token_id": None,
            "eos_token_id": eos_token_id,
            "bias": False,
        },
    }


def weight(name: str, shape: tuple):
    """A parameter's value from a generator seeded by its name: the same on every build and line."""
    import torch

    gen = torch.Generator().manual_seed(zlib.crc32(f"{SEED}:{name}".encode()))
    if len(shape) == 1:  # norm scales and biases: near their usual values, not exactly
        base = 1.0 if name.endswith("weight") else 0.0
        return base + 0.1 * torch.randn(shape, generator=gen)
    fan_in = 1 if "tok_embeddings" in name else int(torch.Size(shape[1:]).numel())
    return torch.randn(shape, generator=gen) * (2.0 / fan_in**0.5)


#: Added after the 256 byte tokens, in this order.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>")


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in character for each byte value (byte-level BPE's alphabet)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tokenizer(out: Path, extra_tokens: tuple[tuple[str, bool], ...] = ()) -> dict:
    """vocab.json, merges.txt (none) and tokenizer_config.json; returns the added token ids.
    ``extra_tokens``: (token, special) added after the InternVL ones (a fine-tune's tokens, e.g. MM-PRM's
    special ``<prm>``; ``Yes``/``No``, single pieces in InternLM2's real vocabulary, as plain added tokens)."""
    vocab = {symbol: b for b, symbol in enumerate(_byte_symbols())}
    tokens = [(t, True) for t in SPECIAL_TOKENS] + list(extra_tokens)
    ids = {token: 256 + i for i, (token, _) in enumerate(tokens)}
    special = dict(tokens)
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 8192,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(i): {"content": token, **flags, "special": special[token]} for token, i in ids.items()
        },
    }
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return ids


def write_checkpoint(
    out: str | Path, unreproducible_buffer: bool = False, extra_tokens: tuple[tuple[str, bool], ...] = ()
) -> str:
    """Write the stand-in checkpoint into ``out``; return its path.

    ``unreproducible_buffer``: the rotary module also registers a non-persistent buffer drawn with
    ``torch.rand`` in ``__init__``, which no fresh build can reproduce. ``extra_tokens``: see
    ``write_tokenizer``; the embeddings grow with them.
    """
    import torch
    from safetensors.torch import save_file
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        if unreproducible_buffer and name == "modeling_internlm2.py":
            text = text.replace("UNREPRODUCIBLE_BUFFER = False", "UNREPRODUCIBLE_BUFFER = True")
        (out / name).write_text(text.lstrip())
    ids = write_tokenizer(out, extra_tokens)
    config = checkpoint_config(256 + len(ids), ids["<|endoftext|>"], ids["<|im_end|>"])
    (out / "config.json").write_text(json.dumps(config, indent=1))

    # Names and shapes from the checkpoint's own class, built on the meta device (nothing computed).
    config_cls = get_class_from_dynamic_module("configuration_internvl_chat.InternVLChatConfig", str(out))
    model_cls = get_class_from_dynamic_module("modeling_internvl_chat.InternVLChatModel", str(out))
    with torch.device("meta"):
        skeleton = model_cls(config_cls(**config))
    tensors = {name: weight(name, tuple(p.shape)).contiguous() for name, p in skeleton.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return str(out)
