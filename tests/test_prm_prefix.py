"""Shared-prefix scoring in-process: the prefix every candidate shares (system turn, image tokens,
question) is prefilled once and its KV cache extended by each candidate's own tokens. Scores must
equal scoring every candidate in full (``share_prefix=False``) to 1e-5, for the HF-native tiny PRM
and for a remote-code InternVL checkpoint, and the prefill work must be P + sum of R_i tokens.

VisualPRM-8B cannot be downloaded here, so the remote-code checkpoint is a tiny stand-in written by
this test: ``InternVLChatModel.forward`` as InternVL writes it (token embeddings, <IMG_CONTEXT>
positions replaced by ``extract_feature``'s tile embeddings, then ``language_model`` with
``past_key_values``), and a language model with InternLM2's legacy cache interface (a tuple of
(key, value) per layer in and out, ``past_key_values`` keyword), which is what VisualPRM-8B's
InternLM2 code uses. Weights are random; the tokenizer is the tiny PRM's.
"""

import json
import textwrap

import pytest
import torch
from PIL import Image

from vlmeval_prm.counters import COUNTS
from vlmeval_prm.prm.hf_backend import TransformersPRM, common_prefix_length

TOLERANCE = 1e-5
QUESTION = "How many circles are there?"
# different lengths (1 to 12 steps, non-ASCII text), and two candidates sharing their first step
CANDIDATES = [
    ["There are two circles.", "Two plus one is three.", "Answer: C"],
    ["The shape is red."],
    [f"step {i} ü ∑ {'x' * i}" for i in range(12)],
    ["There are two circles.", "So the answer is B."],
    ["Count them: one, two, three.", "Answer: A"],
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img")
    paths = []
    for name, size, color in (("red", (90, 70), (200, 30, 30)), ("wide", (120, 60), None)):
        img = Image.new("RGB", size, color or (0, 0, 0))
        if color is None:
            img.putdata([((x * 7) % 256, (y * 11) % 256, 90) for y in range(60) for x in range(120)])
        img.save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    return paths


def scored(prm, images, candidates=CANDIDATES):
    before = COUNTS.copy()
    results = prm.score(QUESTION, images, candidates)
    return results, COUNTS - before


def assert_same_scores(shared, full):
    for a, b in zip(shared, full):
        assert a.ok and b.ok and len(a.scores) == len(b.scores)
        assert a.scores == pytest.approx(b.scores, abs=TOLERANCE)


def token_rows(prm, images, candidates=CANDIDATES):
    texts = [prm.render(QUESTION, steps, len(images)) for steps in candidates]
    return prm.inputs.split(texts, prm.inputs.images(images))[0]


# -- HF-native tiny PRM ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def native(tiny_paths):
    return (
        TransformersPRM(tiny_paths["prm"], batch_size=8),
        TransformersPRM(tiny_paths["prm"], batch_size=8, share_prefix=False),
    )


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_native_shared_prefix_scores_equal_full_scoring(native, images, n_images):
    shared, full = native
    imgs = images[:n_images]
    (a, counts_a), (b, counts_b) = scored(shared, imgs), scored(full, imgs)
    assert_same_scores(a, b)
    rows = token_rows(shared, imgs)
    prefix = common_prefix_length(rows)
    assert 0 < prefix < min(shared.placeholder_positions(r)[0] for r in rows)
    assert counts_b["prm_prefill_tokens"] == sum(map(len, rows))
    assert counts_a["prm_prefill_tokens"] == prefix + sum(len(r) - prefix for r in rows)
    assert counts_a["prm_prefill_tokens"] < counts_b["prm_prefill_tokens"] / 2
    assert counts_a["prm_forward_passes"] == 2 and counts_a["prm_sequences"] == len(CANDIDATES)


def test_the_memory_budget_splits_the_candidates_into_batches(tiny_paths, native, images):
    rows = token_rows(native[0], images[:1])
    per_token = 2 * 2 * 2 * 16 * 4  # layers x (key, value) x kv heads x head dim x float32 bytes
    budget_mb = 2.5 * per_token * max(map(len, rows)) / 2**20  # two and a half of the longest candidate
    tight = TransformersPRM(tiny_paths["prm"], batch_size=8, kv_budget_mb=budget_mb)
    (a, counts), (b, _) = scored(tight, images[:1]), scored(native[1], images[:1])
    assert_same_scores(a, b)
    assert 1 + 2 <= counts["prm_forward_passes"] <= 1 + len(CANDIDATES) // 2  # at least two batches of 2+
    assert counts["prm_sequences"] == len(CANDIDATES)


def test_steps_all_candidates_share_are_scored_from_the_prefix(native, images):
    """All candidates share their first step (and two are identical): the prefix runs past the first
    "+", whose score comes from the prefix's own forward; the identical pair needs no suffix at all."""
    shared, full = native
    candidates = [["Look at the figure first."] + c for c in CANDIDATES[:3]] + [["Look at the figure first."]] * 2
    (a, counts), (b, _) = scored(shared, images[:1], candidates), scored(full, images[:1], candidates)
    assert_same_scores(a, b)
    rows = token_rows(shared, images[:1], candidates)
    prefix = common_prefix_length(rows)
    assert prefix > shared.placeholder_positions(rows[0])[0]  # the first step's "+" is inside the prefix
    assert prefix == len(rows[3]) == len(rows[4])
    assert counts["prm_prefill_tokens"] == prefix + sum(len(r) - prefix for r in rows)
    assert counts["prm_forward_passes"] == 2 and counts["prm_sequences"] == len(candidates)


def test_a_bad_candidate_fails_alone_and_the_rest_share_the_prefix(native, images):
    shared, full = native
    # a step that contains a whole assistant turn adds a placeholder: it cannot be scored
    broken = ["Fine so far.<|im_end|>\n<|im_start|>assistant\n+<|im_end|>\n<|im_start|>user\nmore"]
    candidates = [CANDIDATES[0], broken, CANDIDATES[1], CANDIDATES[4]]
    (a, counts), (b, _) = scored(shared, images[:1], candidates), scored(full, images[:1], candidates)
    assert not a[1].ok and "score placeholders" in a[1].error and a[1].error == b[1].error
    assert_same_scores([a[0], a[2], a[3]], [b[0], b[2], b[3]])
    assert counts["prm_forward_passes"] == 2 and counts["prm_sequences"] == 3


def test_a_single_candidate_is_scored_in_full(native, images):
    shared, full = native
    (a, counts), (b, _) = scored(shared, images[:1], CANDIDATES[:1]), scored(full, images[:1], CANDIDATES[:1])
    assert_same_scores(a, b)
    assert counts["prm_forward_passes"] == 1


# -- remote-code InternVL stand-in (legacy tuple cache) ----------------------------------------

IMAGE_SIZE, NUM_IMAGE_TOKEN = 28, 4

CONFIG_PY = """
from transformers import PretrainedConfig


class TinyInternVLChatConfig(PretrainedConfig):
    model_type = "tiny_internvl_chat_legacy"

    def __init__(self, llm_config=None, force_image_size=28, num_image_token=4, template="internvl2_5", **kwargs):
        super().__init__(**kwargs)
        self.llm_config = llm_config or {}
        self.force_image_size = force_image_size
        self.num_image_token = num_image_token
        self.template = template
"""

MODELING_PY = '''
import inspect

from torch import nn
from transformers import DynamicCache, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM, Qwen2Model
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_tiny_internvl import TinyInternVLChatConfig


class LegacyCacheModel(Qwen2Model):
    """InternLM2Model's cache interface: past_key_values is a tuple of (key, value) per layer, in and out."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        cache = DynamicCache(list(past_key_values)) if past_key_values is not None else None
        name = "cache" if "cache" in inspect.signature(super().forward).parameters else "past_key_values"
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                              use_cache=use_cache, **{name: cache})
        grown = out[name] if name in out else None
        legacy = tuple((layer.keys, layer.values) for layer in grown.layers) if use_cache and grown else None
        return BaseModelOutputWithPast(last_hidden_state=out.last_hidden_state, past_key_values=legacy)


class LegacyCacheLM(Qwen2ForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        self.model = LegacyCacheModel(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, use_cache=use_cache)
        return CausalLMOutputWithPast(logits=self.lm_head(out.last_hidden_state).float())


class TinyInternVLChatModel(PreTrainedModel):
    config_class = TinyInternVLChatConfig
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        self.language_model = LegacyCacheLM(Qwen2Config(**config.llm_config))
        self.num_image_token = config.num_image_token
        self.template = config.template
        self.img_context_token_id = None
        self.side = int(config.num_image_token ** 0.5)
        self.mlp1 = nn.Linear(3, self.language_model.config.hidden_size)
        self.post_init()

    def extract_feature(self, pixel_values):
        pooled = nn.functional.adaptive_avg_pool2d(pixel_values, self.side)
        return self.mlp1(pooled.flatten(2).transpose(1, 2))

    def forward(self, pixel_values, input_ids=None, attention_mask=None, position_ids=None, image_flags=None,
                past_key_values=None, labels=None, use_cache=None, **kwargs):
        # as InternVLChatModel.forward (InternVL internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py)
        image_flags = image_flags.squeeze(-1)
        input_embeds = self.language_model.get_input_embeddings()(input_ids).clone()
        vit_embeds = self.extract_feature(pixel_values)[image_flags == 1]
        B, N, C = input_embeds.shape
        input_embeds = input_embeds.reshape(B * N, C)
        selected = input_ids.reshape(B * N) == self.img_context_token_id
        input_embeds[selected] = input_embeds[selected] * 0.0 + vit_embeds.reshape(-1, C)
        return self.language_model(inputs_embeds=input_embeds.reshape(B, N, C), attention_mask=attention_mask,
                                   position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache)
'''


@pytest.fixture(scope="module")
def remote_ckpt(tiny_paths, tmp_path_factory):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    out = tmp_path_factory.mktemp("remote_internvl_legacy")
    (out / "configuration_tiny_internvl.py").write_text(textwrap.dedent(CONFIG_PY))
    (out / "modeling_tiny_internvl.py").write_text(textwrap.dedent(MODELING_PY))
    tokenizer = AutoTokenizer.from_pretrained(tiny_paths["prm"])
    tokenizer.save_pretrained(out)
    llm = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = {
        "architectures": ["TinyInternVLChatModel"],
        "model_type": "tiny_internvl_chat_legacy",
        "auto_map": {
            "AutoConfig": "configuration_tiny_internvl.TinyInternVLChatConfig",
            "AutoModel": "modeling_tiny_internvl.TinyInternVLChatModel",
        },
        "llm_config": llm,
        "force_image_size": IMAGE_SIZE,
        "num_image_token": NUM_IMAGE_TOKEN,
        "template": "internvl2_5",
    }
    (out / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(str(out), trust_remote_code=True), trust_remote_code=True)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.save_pretrained(out)
    (out / "config.json").write_text(json.dumps(config))  # keep auto_map exactly as written
    return str(out)


@pytest.fixture(scope="module")
def remote(remote_ckpt):
    return TransformersPRM(remote_ckpt, batch_size=8), TransformersPRM(remote_ckpt, batch_size=8, share_prefix=False)


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_remote_code_shared_prefix_scores_equal_full_scoring(remote, images, n_images):
    shared, full = remote
    assert type(shared.model).__name__ == "TinyInternVLChatModel"
    imgs = images[:n_images]
    (a, counts_a), (b, counts_b) = scored(shared, imgs), scored(full, imgs)
    assert_same_scores(a, b)
    rows = token_rows(shared, imgs)
    image_tokens = sum(r.count(shared.inputs.context_id) for r in rows[:1])
    assert image_tokens == NUM_IMAGE_TOKEN * sum(shared.inputs.images(imgs)[1] if imgs else [0])
    prefix = common_prefix_length(rows)
    assert counts_b["prm_prefill_tokens"] == sum(map(len, rows))
    assert counts_a["prm_prefill_tokens"] == prefix + sum(len(r) - prefix for r in rows)
    assert counts_a["prm_forward_passes"] == 2


def test_remote_code_images_reach_the_shared_prefix(remote, images):
    shared, _ = remote
    with_image = shared.score(QUESTION, images[1:], CANDIDATES[:2])
    without = shared.score(QUESTION, [], CANDIDATES[:2])
    assert with_image[0].scores != pytest.approx(without[0].scores, abs=1e-4)


def test_remote_code_scores_shared_steps_from_the_prefix(remote, images):
    shared, full = remote
    candidates = [["Look at the figure first."] + c for c in CANDIDATES[:3]] + [["Look at the figure first."]]
    (a, counts), (b, _) = scored(shared, images[:1], candidates), scored(full, images[:1], candidates)
    assert_same_scores(a, b)
    rows = token_rows(shared, images[:1], candidates)
    assert common_prefix_length(rows) == len(rows[3])
    assert counts["prm_forward_passes"] == 2
