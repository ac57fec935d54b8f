"""In-process remote-code checkpoints of VisualPRM-8B's kind are made correct or refused, on every
transformers line the project supports (run this file under transformers 4.57.x and 5.x).

VisualPRM-8B / InternVL2.5-8B cannot be downloaded here; ``standins.internlm2_remote`` writes a tiny
checkpoint with the patterns of InternVL's real ``modeling_internlm2.py`` and
``modeling_internvl_chat.py`` (OpenGVLab/InternVL 2410d1dbf208f0e799459aff9376e5747dbf41a2) that
matter: non-persistent RoPE buffers built in ``__init__`` with dynamic NTK scaling, a remote
``_init_weights`` that ignores them, no ``GenerationMixin``, legacy tuple KV caches. "Correct" below
is the checkpoint's own classes built eagerly on the CPU with ``load_state_dict`` of the saved
weights, whose RoPE buffers are also checked against the formula.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

from standins.internlm2_remote import IMAGE_SIZE, NUM_IMAGE_TOKEN, write_checkpoint
from vlmeval_prm import remote_code
from vlmeval_prm.prm import build_scorer
from vlmeval_prm.prm.formats.visualprm import PRM_SYSTEM_PROMPT
from vlmeval_prm.remote_code import KNOWN_GOOD_TRANSFORMERS, RemoteCodeError, ensure_generate, repair_buffers

TF5 = int(transformers.__version__.split(".")[0]) >= 5
ROPE_BUFFERS = ("inv_freq", "cos_cached", "sin_cached")
QUESTION = "How many circles are there?"
ONE_IMAGE = ["There are two circles.", "Two plus one is three.", "Answer: C"]
TWO_IMAGES = ["The left image is red.", "The right one is striped.", "Answer: B"]
#: Scores of the stand-in, computed once (transformers 5.25, repaired) and identical on 4.57.6.
GOLDEN = {
    "one_image": [0.37766045, 0.04765916, 0.02181816],
    "two_images": [0.07115320, 0.23245832, 0.00740473],
}
CPU_SITE = Path(__file__).parent / "standins" / "cpu_site"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("internlm2_standin"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img")
    red, wide = folder / "red.png", folder / "wide.png"
    Image.new("RGB", (90, 70), (200, 30, 30)).save(red)
    img = Image.new("RGB", (120, 60))
    img.putdata([((x * 7) % 256, (y * 11) % 256, 90) for y in range(60) for x in range(120)])
    img.save(wide)
    return [str(red), str(wide)]


def load_plainly(path):
    """As a user would, and as VLMEvalKit's InternVLChat does (float32 here, on the CPU)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def correct(checkpoint):
    """The checkpoint's own classes built eagerly (buffers computed by ``__init__`` on the CPU), then
    the saved weights loaded with ``load_state_dict``."""
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
    model = get_class_from_dynamic_module("modeling_internvl_chat.InternVLChatModel", checkpoint)(config)
    model.load_state_dict(load_file(os.path.join(checkpoint, "model.safetensors")), strict=True)
    return model.eval()


def rope_buffers(model) -> dict:
    return {n: b for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] in ROPE_BUFFERS}


def test_the_correct_model_has_the_rope_of_the_formula(correct):
    """Guards the reference: InternLM2's RoPE (theta 1e6, head dim 8, 2048 positions) by hand."""
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, 8, 2).float() / 8))
    angles = torch.outer(torch.arange(2048).float(), inv_freq)
    for layer in correct.language_model.model.layers:
        rotary = layer.attention.rotary_emb
        assert type(rotary).__name__ == "InternLM2DynamicNTKScalingRotaryEmbedding"
        torch.testing.assert_close(rotary.inv_freq, inv_freq)
        torch.testing.assert_close(rotary.cos_cached, torch.cat([angles, angles], -1).cos())
        torch.testing.assert_close(rotary.sin_cached, torch.cat([angles, angles], -1).sin())


@pytest.mark.skipif(not TF5, reason="transformers 4.57 computes the RoPE buffers in __init__ at load time")
def test_the_standin_reproduces_the_5x_bug(checkpoint, correct):
    """Plain from_pretrained on 5.x: uninitialised RoPE buffers, other logits, no error."""
    plain = load_plainly(checkpoint)
    good = rope_buffers(correct)
    wrong = [n for n, b in rope_buffers(plain).items() if not torch.allclose(b, good[n])]
    assert wrong  # uninitialised memory: usually all 6; one can reuse memory an equal tensor freed (the reference)
    ids = torch.arange(260, dtype=torch.long)[None] % 256
    with torch.no_grad():
        assert not torch.allclose(
            plain.language_model(input_ids=ids).logits, correct.language_model(input_ids=ids).logits
        )


def test_repair_buffers_makes_the_loaded_model_equal_the_correct_one(checkpoint, correct):
    plain = load_plainly(checkpoint)
    repaired = repair_buffers(plain, checkpoint)
    expected = [f"language_model.model.layers.{i}.attention.rotary_emb.{b}" for i in range(2) for b in ROPE_BUFFERS]
    assert sorted(repaired) == (sorted(expected) if TF5 else [])  # 4.57.6 loads them right
    for name, buffer in correct.named_buffers():
        torch.testing.assert_close(dict(plain.named_buffers())[name], buffer, rtol=0, atol=0)
    assert repair_buffers(plain, checkpoint) == []  # nothing left to repair
    ids = torch.arange(300, dtype=torch.long)[None] % 256
    with torch.no_grad():
        torch.testing.assert_close(
            plain.language_model(input_ids=ids).logits, correct.language_model(input_ids=ids).logits
        )


def reference_scores(model, tokenizer, images, steps) -> list[float]:
    """VisualPRM's generate_steps_with_soft_score, transcribed: per step, the internvl2_5 prompt of the
    conversation so far with an open assistant turn, each <image> expanded to its tiles' tokens, one
    forward, softmax over the (+, -) logits. Several images: VLMEvalKit's "Image-k: <image>" lines."""
    from vlmeval.vlm.internvl.utils import load_image

    tiles = [load_image(p, input_size=IMAGE_SIZE, max_num=12) for p in images]
    if len(images) == 1:
        question = f"<image>\n{QUESTION}"
    else:
        question = "".join(f"Image-{k + 1}: <image>\n" for k in range(len(images))) + QUESTION
    history, scores = [], []
    for i, step in enumerate(steps):
        if i == 0:
            step = f"### Question:\n{question}\n\n### Solution Process:\n{step}"
        query = f"<|im_start|>system\n{PRM_SYSTEM_PROMPT}<|im_end|>\n"
        for old, answer in history:
            query += f"<|im_start|>user\n{old}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
        query += f"<|im_start|>user\n{step}<|im_end|>\n<|im_start|>assistant\n"
        for t in tiles:
            query = query.replace("<image>", "<img>" + "<IMG_CONTEXT>" * NUM_IMAGE_TOKEN * t.shape[0] + "</img>", 1)
        ids = tokenizer(query, return_tensors="pt")["input_ids"]
        pixel_values = torch.cat(tiles)
        model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
        with torch.no_grad():
            logits = model(
                pixel_values=pixel_values,
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                image_flags=torch.ones(pixel_values.shape[0], 1, dtype=torch.long),
            ).logits
        pair = logits[0, -1, [tokenizer.convert_tokens_to_ids("+"), tokenizer.convert_tokens_to_ids("-")]]
        scores.append(torch.softmax(pair.float(), -1)[0].item())
        history.append((step, "+"))
    return scores


def test_the_prm_scores_equal_the_correct_computation_on_every_line(checkpoint, correct, images):
    prm = build_scorer(f"transformers:{checkpoint}", batch_size=4)
    one = prm.score(QUESTION, images[1:], [ONE_IMAGE])[0]
    two = prm.score(QUESTION, images, [TWO_IMAGES])[0]
    assert one.ok and two.ok, (one.error, two.error)
    assert one.scores == pytest.approx(reference_scores(correct, prm.tokenizer, images[1:], ONE_IMAGE), abs=1e-5)
    assert two.scores == pytest.approx(reference_scores(correct, prm.tokenizer, images, TWO_IMAGES), abs=1e-5)
    assert one.scores == pytest.approx(GOLDEN["one_image"], abs=1e-5)
    assert two.scores == pytest.approx(GOLDEN["two_images"], abs=1e-5)


def test_a_buffer_that_cannot_be_recomputed_is_refused(tmp_path):
    """A non-persistent buffer drawn with torch.rand in __init__: no fresh build reproduces it, so
    whatever from_pretrained left in it cannot be verified (on 4.57 a random draw, on 5.x garbage)."""
    checkpoint = write_checkpoint(tmp_path / "unreproducible", unreproducible_buffer=True)
    with pytest.raises(RemoteCodeError) as refused:
        build_scorer(f"transformers:{checkpoint}")
    message = str(refused.value)
    assert isinstance(refused.value, ValueError)
    assert checkpoint in message and "rotary_emb.jitter" in message
    assert f"transformers {transformers.__version__}" in message and KNOWN_GOOD_TRANSFORMERS in message


def test_a_buffer_whose_shape_changed_is_refused(checkpoint):
    """Dynamic NTK rebuilds its cache past max_position_embeddings: repair must run before use."""
    model = load_plainly(checkpoint)
    model.language_model.model.layers[0].attention.rotary_emb._set_cos_sin_cache(4096, "cpu", torch.float32)
    with pytest.raises(
        RemoteCodeError, match=r"rotary_emb\.(cos|sin)_cached has shape \(4096, 8\), its own code builds \(2048, 8\)"
    ):
        repair_buffers(model, checkpoint)


def argmax_loop(model, tokenizer, pixel_values, ids, n: int) -> list[int]:
    """Greedy decoding by full forwards of InternVLChatModel (no cache), stopping after <|im_end|>."""
    eos, out = tokenizer.convert_tokens_to_ids("<|im_end|>"), []
    flags = torch.ones(pixel_values.shape[0], 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([ids, torch.tensor([out], dtype=torch.long)], dim=1)
            logits = model(pixel_values=pixel_values, input_ids=seq, image_flags=flags).logits
            out.append(int(logits[0, -1].argmax()))
            if out[-1] == eos:
                break
    return out


def test_ensure_generate_gives_the_internlm2_lm_a_working_generate(checkpoint, images):
    """GenerationMixin with the pre-4.50 generation inputs: InternVLChatModel.generate (vision
    embeddings, then language_model.generate(inputs_embeds=...)) equals the cache-less argmax loop."""
    from transformers import AutoTokenizer
    from vlmeval.vlm.internvl.utils import load_image

    model = load_plainly(checkpoint)
    repair_buffers(model, checkpoint)
    lm_class = type(model.language_model)
    assert not hasattr(model.language_model, "generate")  # as loaded, on 4.57.6 and 5.x
    assert ensure_generate(model, checkpoint) == ["language_model"]
    assert type(model.language_model).__name__ == lm_class.__name__
    assert type(model.language_model).__module__ == lm_class.__module__
    assert ensure_generate(model, checkpoint) == []  # idempotent

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True, use_fast=False)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    pixel_values = load_image(images[1], input_size=IMAGE_SIZE, max_num=4)
    query = (
        "<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * NUM_IMAGE_TOKEN * pixel_values.shape[0] + "</img>\n"
        f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer(query, return_tensors="pt")["input_ids"]
    generated = model.generate(
        pixel_values=pixel_values, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False
    )
    expected = argmax_loop(model, tokenizer, pixel_values, ids, 8)
    assert len(expected) >= 3 and generated[0].tolist() == expected


def test_the_mix_in_alone_is_not_enough_and_the_probe_refuses_it(checkpoint, monkeypatch):
    """Measured on 4.57.6 and 5.25: ``GenerationMixin`` added as is (what transformers' own warning
    suggests) breaks on InternLM2's legacy-cache ``prepare_inputs_for_generation``; the probe turns
    that into a RemoteCodeError and the module is left as loaded. Faked: only the class builder, to
    the plain mix-in."""
    from transformers import GenerationMixin

    model = load_plainly(checkpoint)
    repair_buffers(model, checkpoint)

    def plain(cls):
        return type(cls.__name__, (cls, GenerationMixin), {"__module__": cls.__module__})

    monkeypatch.setattr(remote_code, "_with_generation_mixin", plain)
    with pytest.raises(RemoteCodeError) as refused:
        ensure_generate(model, checkpoint)
    message = str(refused.value)
    assert checkpoint in message and f"transformers {transformers.__version__}" in message
    assert "InternLM2ForCausalLM cannot generate" in message
    assert not hasattr(model.language_model, "generate")


POLICY_SCRIPT = """
import json
import sys

import torch
from vlmeval.vlm import InternVLChat

from vlmeval_prm.remote_code import prepare_policy

checkpoint, image = sys.argv[1:3]
message = [{"type": "image", "value": image}, {"type": "text", "value": "How many circles are there?"}]
policy = InternVLChat(model_path=checkpoint, version="V2.0", max_new_tokens=8)
try:
    policy.generate(message)
    before = None
except Exception as exc:
    before = f"{type(exc).__name__}: {exc}"
prepare_policy(policy)
calls, generate = [], policy.model.generate


def recorded(pixel_values=None, input_ids=None, **kwargs):
    out = generate(pixel_values=pixel_values, input_ids=input_ids, **kwargs)
    calls.append((pixel_values, input_ids, out))
    return out


policy.model.generate = recorded
greedy = policy.generate(message)
pixel_values, ids, out = calls[0]
flags = torch.ones(pixel_values.shape[0], 1, dtype=torch.long)
loop = []
with torch.no_grad():
    for _ in range(out.shape[1]):
        seq = torch.cat([ids, torch.tensor([loop], dtype=torch.long)], dim=1)
        logits = policy.model(pixel_values=pixel_values, input_ids=seq, image_flags=flags).logits
        loop.append(int(logits[0, -1].argmax()))
policy.kwargs["do_sample"] = True
sampled = policy.generate(message)
result = {"before": before, "greedy": greedy, "generated": out[0].tolist(), "loop": loop, "sampled": sampled,
          "dtype": str(policy.model.dtype)}
print("RESULT " + json.dumps(result))
"""


@pytest.mark.e2e
def test_vlmevalkit_internvlchat_generates_on_the_standin_after_prepare_policy(checkpoint, images, tmp_path):
    """VLMEvalKit's own InternVLChat (bfloat16, device_map="auto") on the stand-in, in a subprocess.
    Faked: only the GPU (``standins/cpu_site`` keeps its "cuda" placement on the CPU). Before
    ``prepare_policy`` every generate fails; after it, greedy decoding through InternVLChatModel.chat
    equals the cache-less argmax loop over the same inputs, and sampling runs."""
    script = tmp_path / "policy.py"
    script.write_text(textwrap.dedent(POLICY_SCRIPT))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(CPU_SITE), os.environ.get("PYTHONPATH", "")]),
        "PATH": os.pathsep.join([str(CPU_SITE), os.environ["PATH"]]),
    }
    proc = subprocess.run(
        [sys.executable, str(script), checkpoint, images[1]], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["before"] == "AttributeError: 'InternLM2ForCausalLM' object has no attribute 'generate'"
    assert result["dtype"] == "torch.bfloat16"
    assert len(result["generated"]) == 8 and result["generated"] == result["loop"]
    assert isinstance(result["greedy"], str) and isinstance(result["sampled"], str)
