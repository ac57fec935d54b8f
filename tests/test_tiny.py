"""The locally built tiny InternVL models: deterministic, cached, loadable, and fit for PRM scoring."""

import os
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from vlmeval_prm import tiny  # noqa: E402
from vlmeval_prm.constants import HOME_ENV  # noqa: E402

CONVERSATION = [
    {"role": "system", "content": [{"type": "text", "text": "Score each step."}]},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 3 + 4?\n\nStep 1: 3 + 4 = 7"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "+"}]},
    {"role": "user", "content": [{"type": "text", "text": "The answer is 7."}]},
    {"role": "assistant", "content": [{"type": "text", "text": "+"}]},
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """A 64-wide model gains nothing from threads, and on a busy 2-core box OpenMP's second thread
    makes generate() ~30x slower; restored afterwards for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_cache")


@pytest.fixture(scope="module")
def prm_dir(cache):
    return tiny.tiny_model_path("prm", cache_dir=str(cache))


@pytest.fixture(scope="module")
def policy_dir(cache):
    return tiny.tiny_model_path("policy", cache_dir=str(cache))


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (120, 80), (200, 30, 90))


def _load(path):
    return (
        AutoProcessor.from_pretrained(path),
        AutoModelForImageTextToText.from_pretrained(path, attn_implementation=tiny.ATTN_IMPLEMENTATION).eval(),
    )


def test_builds_are_identical_and_roles_differ(tmp_path, policy_dir, prm_dir):
    again = tiny.tiny_model_path("policy", cache_dir=str(tmp_path))
    first, second = load_file(Path(policy_dir) / "model.safetensors"), load_file(Path(again) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (Path(policy_dir) / "tokenizer.json").read_bytes() == (Path(again) / "tokenizer.json").read_bytes()
    assert all(t.dtype == torch.float32 for t in first.values())

    prm = load_file(Path(prm_dir) / "model.safetensors")
    random_tensors = [k for k in first if first[k].dim() > 1]
    assert random_tensors and not any(torch.equal(first[k], prm[k]) for k in random_tensors)


def test_layout_size_and_no_leftovers(cache, policy_dir, prm_dir):
    assert Path(policy_dir) == cache / f"policy-v{tiny.RECIPE_VERSION}"
    assert sorted(p.name for p in cache.iterdir()) == sorted([Path(policy_dir).name, Path(prm_dir).name])
    size = sum(f.stat().st_size for f in Path(policy_dir).iterdir())
    assert size < 5_000_000


def test_second_call_reuses_without_building(cache, policy_dir, monkeypatch):
    weights = Path(policy_dir) / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def must_not_build(*args):
        raise AssertionError("a finished model was rebuilt")

    monkeypatch.setattr(tiny, "_build", must_not_build)
    assert tiny.tiny_model_path("policy", cache_dir=str(cache)) == policy_dir
    assert weights.stat().st_mtime_ns == before


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    path = tiny.tiny_model_path("prm")
    assert Path(path) == tmp_path / "tiny" / f"prm-v{tiny.RECIPE_VERSION}"
    assert (Path(path) / "model.safetensors").is_file()


def test_losing_a_build_race_keeps_the_winner(tmp_path, monkeypatch):
    """Another process finishes first while we build: we return its model and clean up our temp dir."""
    real_build = tiny._build
    final = tmp_path / f"policy-v{tiny.RECIPE_VERSION}"

    def build_after_a_rival(role, out):
        real_build(role, final)  # the rival's finished model appears under the final name
        (final / "rival").write_text("winner")
        real_build(role, out)

    monkeypatch.setattr(tiny, "_build", build_after_a_rival)
    assert tiny.tiny_model_path("policy", cache_dir=str(tmp_path)) == str(final)
    assert (final / "rival").read_text() == "winner"
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_unknown_role_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny model role"):
        tiny.tiny_model_path("critic", cache_dir=str(tmp_path))


def test_chat_template_and_label_tokens(prm_dir, image):
    processor = AutoProcessor.from_pretrained(prm_dir)
    tok = processor.tokenizer
    text = processor.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<|im_start|>system\nScore each step.<|im_end|>\n"
        "<|im_start|>user\n<IMG_CONTEXT>\nWhat is 3 + 4?\n\nStep 1: 3 + 4 = 7<|im_end|>\n"
        "<|im_start|>assistant\n+<|im_end|>\n"
        "<|im_start|>user\nThe answer is 7.<|im_end|>\n"
        "<|im_start|>assistant\n+<|im_end|>\n"
    )
    prompt = processor.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")

    inputs = processor(text=[text], images=[image], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert inputs["pixel_values"].shape == (1, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    start = ids.index(tok.convert_tokens_to_ids("<img>"))
    context = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert ids[start + 1 : start + 2 + tiny.IMAGE_SEQ_LENGTH] == [context] * tiny.IMAGE_SEQ_LENGTH + [
        tok.convert_tokens_to_ids("</img>")
    ]

    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    plus = tok.convert_tokens_to_ids("+")
    after_header = [ids[i + len(header)] for i in range(len(ids) - len(header)) if ids[i : i + len(header)] == header]
    assert after_header == [plus, plus]
    assert tok.encode("+", add_special_tokens=False) == [plus]
    assert tok.encode("-", add_special_tokens=False) == [tok.convert_tokens_to_ids("-")]
    assert tok.convert_tokens_to_ids("\u010a\u010a") in tok.encode("so 7\n\nthe answer", add_special_tokens=False)
    assert tok.eos_token == "<|im_end|>" and tok.model_max_length == tiny.MAX_LENGTH


def test_sampling_varies_and_greedy_repeats(policy_dir, image):
    processor, model = _load(policy_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find the area."}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    n_prompt = inputs["input_ids"].shape[1]
    torch.manual_seed(0)
    with torch.inference_mode():
        sampled = model.generate(
            **inputs, do_sample=True, temperature=0.7, top_p=0.95, num_return_sequences=8, max_new_tokens=48
        )
        greedy = [model.generate(**inputs, do_sample=False, max_new_tokens=24) for _ in range(2)]
    texts = processor.tokenizer.batch_decode(sampled[:, n_prompt:], skip_special_tokens=True)
    assert len(set(texts)) == 8
    assert sum("\n\n" in t for t in texts) >= 4  # blank lines (step breaks) are common
    assert torch.equal(greedy[0], greedy[1])


def test_one_pass_logits_equal_prefix_logits(prm_dir, image):
    """What a one-pass PRM relies on: the logit at a position does not depend on later tokens."""
    processor, model = _load(prm_dir)
    inputs = processor(
        text=[processor.apply_chat_template(CONVERSATION, tokenize=False)], images=[image], return_tensors="pt"
    )
    ids = inputs["input_ids"][0].tolist()
    plus = processor.tokenizer.convert_tokens_to_ids("+")
    cuts = [i for i, t in enumerate(ids) if t == plus][-2:] + [len(ids) - 3]
    with torch.inference_mode():
        full = model(**inputs).logits[0]
        for cut in cuts:
            prefix = dict(
                inputs, input_ids=inputs["input_ids"][:, :cut], attention_mask=inputs["attention_mask"][:, :cut]
            )
            diff = (model(**prefix).logits[0] - full[:cut]).abs().max().item()
            assert diff < 1e-5, (cut, diff)
    pair = full[[c - 1 for c in cuts[:2]]][:, [plus, processor.tokenizer.convert_tokens_to_ids("-")]]
    p_plus = torch.softmax(pair, dim=-1)[:, 0]
    assert ((p_plus > 0.01) & (p_plus < 0.99)).all()


def test_forward_is_fast_on_cpu(prm_dir, image):
    processor, model = _load(prm_dir)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "the area " * 100}]}], tokenize=False
    )
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    assert 200 <= inputs["input_ids"].shape[1] <= 260
    timings = []
    with torch.inference_mode():
        for _ in range(3):
            start = time.perf_counter()
            model(**inputs)
            timings.append(time.perf_counter() - start)
    assert min(timings) < 1.0, timings


def test_build_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.tiny_model_path("prm", cache_dir=str(tmp_path))
    assert torch.equal(torch.rand(3), expected)
    assert os.listdir(tmp_path) == [f"prm-v{tiny.RECIPE_VERSION}"]
