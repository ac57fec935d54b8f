"""``transformers:<path>`` on a remote-code InternVL checkpoint, the kind VisualPRM-8B is.

VisualPRM-8B cannot be downloaded here, so this test writes a tiny stand-in for it: a checkpoint
whose ``config.json`` names its own modelling file through ``auto_map`` and whose model has the
interface of InternVL's ``InternVLChatModel`` that the backend relies on (``num_image_token``,
``template``, ``img_context_token_id``, ``config.force_image_size``,
``forward(pixel_values, input_ids, attention_mask, image_flags)`` filling the ``<IMG_CONTEXT>``
positions with one embedding per image token). Its weights are random; its tokenizer is the tiny
PRM's (ChatML markers and InternVL's image tokens). The reference scores below follow VisualPRM's
own ``generate_steps_with_soft_score``: one forward pass per step over the conversation so far.
"""

import json
import textwrap

import pytest
import torch
from PIL import Image

from vlmeval_prm.counters import COUNTS
from vlmeval_prm.prm import build_scorer
from vlmeval_prm.prm.formats.visualprm import PRM_SYSTEM_PROMPT
from vlmeval_prm.prm.hf_backend import TransformersPRM

IMAGE_SIZE, NUM_IMAGE_TOKEN = 28, 4

CONFIG_PY = """
from transformers import PretrainedConfig


class TinyInternVLChatConfig(PretrainedConfig):
    model_type = "tiny_internvl_chat"

    def __init__(self, llm_config=None, force_image_size=28, num_image_token=4, template="internvl2_5", **kwargs):
        super().__init__(**kwargs)
        self.llm_config = llm_config or {}
        self.force_image_size = force_image_size
        self.num_image_token = num_image_token
        self.template = template
"""

MODELING_PY = '''
import torch
from torch import nn
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from .configuration_tiny_internvl import TinyInternVLChatConfig


class TinyInternVLChatModel(PreTrainedModel):
    """InternVLChatModel's interface: image tokens replaced by vision embeddings, then the LLM."""

    config_class = TinyInternVLChatConfig
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        llm = Qwen2Config(**config.llm_config)
        self.language_model = Qwen2ForCausalLM(llm)
        self.num_image_token = config.num_image_token
        self.template = config.template
        self.img_context_token_id = None
        self.side = int(config.num_image_token ** 0.5)
        self.mlp1 = nn.Linear(3, llm.hidden_size)
        self.post_init()

    def extract_feature(self, pixel_values):
        pooled = nn.functional.adaptive_avg_pool2d(pixel_values, self.side)  # N, 3, s, s
        return self.mlp1(pooled.flatten(2).transpose(1, 2))  # N, num_image_token, C

    def forward(self, pixel_values, input_ids=None, attention_mask=None, image_flags=None, **kwargs):
        image_flags = image_flags.squeeze(-1)
        embeds = self.language_model.get_input_embeddings()(input_ids).clone()
        vit = self.extract_feature(pixel_values)[image_flags == 1]
        B, N, C = embeds.shape
        embeds = embeds.reshape(B * N, C)
        selected = input_ids.reshape(B * N) == self.img_context_token_id
        embeds[selected] = vit.reshape(-1, C).to(embeds.dtype)  # fails unless the counts match
        return self.language_model(inputs_embeds=embeds.reshape(B, N, C), attention_mask=attention_mask)
'''


@pytest.fixture(scope="module")
def remote_ckpt(tiny_paths, tmp_path_factory):
    """Write the checkpoint: modelling code, config with auto_map, random weights, tokenizer."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("remote_internvl")
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
        "model_type": "tiny_internvl_chat",
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
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(str(out), trust_remote_code=True), trust_remote_code=True)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    model.save_pretrained(out)
    (out / "config.json").write_text(json.dumps(config))  # keep auto_map exactly as written
    return str(out)


@pytest.fixture(scope="module")
def prm(remote_ckpt):
    return build_scorer(f"transformers:{remote_ckpt}", batch_size=4)


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "wide.png"
    img = Image.new("RGB", (120, 60))
    img.putdata([((x * 7) % 256, (y * 11) % 256, 90) for y in range(60) for x in range(120)])
    img.save(path)
    return str(path)


CANDIDATES = [["There are two circles.", "Two plus one is three.", "Answer: C"], ["The shape is red."]]


def reference_scores(prm, question, image, steps):
    """VisualPRM's generate_steps_with_soft_score, transcribed: per step, the internvl2_5 prompt of the
    conversation so far with an open assistant turn, <image> expanded, one forward, softmax(+, -)."""
    from vlmeval.vlm.internvl.utils import load_image

    pixel_values = load_image(image, input_size=IMAGE_SIZE, max_num=12)
    tok = prm.tokenizer
    question = "<image>\n" + question
    history, scores = [], []
    for i, step in enumerate(steps):
        if i == 0:
            step = f"### Question:\n{question}\n\n### Solution Process:\n{step}"
        query = f"<|im_start|>system\n{PRM_SYSTEM_PROMPT}<|im_end|>\n"
        for old, answer in history:
            query += f"<|im_start|>user\n{old}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
        query += f"<|im_start|>user\n{step}<|im_end|>\n<|im_start|>assistant\n"
        query = query.replace("<image>", "<img>" + "<IMG_CONTEXT>" * NUM_IMAGE_TOKEN * pixel_values.shape[0] + "</img>")
        ids = tok(query, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            logits = prm.model(
                pixel_values=pixel_values,
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                image_flags=torch.ones(pixel_values.shape[0], 1, dtype=torch.long),
            ).logits
        pair = logits[0, -1, [tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")]]
        scores.append(torch.softmax(pair.float(), -1)[0].item())
        history.append((step, "+"))
    return scores


def test_remote_code_checkpoint_is_loaded_with_its_own_code(prm, remote_ckpt):
    assert isinstance(prm, TransformersPRM)
    assert type(prm.model).__name__ == "TinyInternVLChatModel"  # not a transformers-native class
    assert prm.model.img_context_token_id == prm.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert prm.fmt.system_prompt == PRM_SYSTEM_PROMPT


def test_one_forward_pass_scores_every_step_as_visualprm_does(prm, wide_image):
    question = "How many circles are there?"
    before = COUNTS.copy()
    results = prm.score(question, [wide_image], CANDIDATES)
    counts = COUNTS - before
    # the shared prefix (system turn, image, question) once, then both candidates in one batch
    assert counts["prm_forward_passes"] == 2 and counts["prm_sequences"] == len(CANDIDATES)
    for steps, res in zip(CANDIDATES, results):
        assert res.ok and len(res.scores) == len(steps)
        assert res.scores == pytest.approx(reference_scores(prm, question, wide_image, steps), abs=1e-4)


def test_images_are_tiled_by_vlmevalkit_and_placed_inside_the_question(prm, remote_ckpt, wide_image):
    from vlmeval.vlm.internvl.utils import dynamic_preprocess

    with Image.open(wide_image) as im:
        tiles = len(dynamic_preprocess(im.convert("RGB"), image_size=IMAGE_SIZE, use_thumbnail=True, max_num=12))
    assert tiles == 9  # a 2:1 image: 4 x 2 tiles plus the thumbnail
    loaded = prm.inputs.images([wide_image])
    inputs = prm.inputs.encode([prm.render("Q?", ["s1"], 1)], loaded)
    text = prm.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("<IMG_CONTEXT>") == NUM_IMAGE_TOKEN * tiles
    image = "<img>" + "<IMG_CONTEXT>" * NUM_IMAGE_TOKEN * tiles + "</img>"
    assert f"<|im_start|>user\n### Question:\n{image}\nQ?\n\n### Solution Process:\ns1<|im_end|>\n" in text
    assert inputs["pixel_values"].shape == (tiles, 3, IMAGE_SIZE, IMAGE_SIZE)

    one_tile = TransformersPRM(remote_ckpt, max_num=1)
    assert one_tile.inputs.images([wide_image])[1] == [1]


def test_no_image_and_batching_change_no_score(prm, wide_image):
    together = prm.score("Q", [], CANDIDATES)
    alone = [prm.score("Q", [], [c])[0] for c in CANDIDATES]
    for a, b in zip(together, alone):
        assert a.ok and a.scores == pytest.approx(b.scores, abs=1e-5)
    with_image = prm.score("Q", [wide_image], CANDIDATES[:1])[0]
    assert with_image.scores != pytest.approx(together[0].scores, abs=1e-6)  # the image reaches the model


def test_remote_code_can_be_refused(remote_ckpt):
    with pytest.raises(ValueError, match="needs its own modelling code"):
        TransformersPRM(remote_ckpt, trust_remote_code=False)


def test_an_unknown_conversation_template_needs_the_template_option(remote_ckpt, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(remote_ckpt, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "template": "phi3-chat"}))
    with pytest.raises(ValueError, match="unknown PRM chat template 'phi3-chat'"):
        TransformersPRM(str(other))
    custom = TransformersPRM(str(other), template={"turn_start": "<|im_start|>"})
    assert custom.score("Q", [], CANDIDATES[:1])[0].ok
