"""The ``vl-prm`` format (AI Singapore VL-PRM, Qwen2.5-VL) against its published scoring code:
Tej-Deep/mmr-eval aa314a6a2ae074f45ee3f6325c5689d307c4158f, ``eval/tts_eval/reward_guided_search/VisualPRMv2.py``
(``VisualPRM.get_reward``) and ``prompts.py`` (``PRM_SYSTEM_PROMPT_NORMAL_TOK_V2``, lines 199-218).

The released checkpoints (ob11/Qwen-VL-PRM-3B/7B) cannot be downloaded here: a tiny random-weight
Qwen2.5-VL built by tests/standins/tiny_vlms.py stands in for them (same architecture class, processor
class, patch size and merge, a ChatML template rendering system/user/assistant turns and
``<|vision_start|><|image_pad|><|vision_end|>`` as Qwen2.5-VL's does).
"""

import hashlib

import pytest
import torch
from PIL import Image

from standins.tiny_vlms import tiny_vlm
from vlmeval_prm.prm import validate_spec
from vlmeval_prm.prm.formats import FORMATS, build_format
from vlmeval_prm.prm.formats.vl_prm import VL_PRM_SYSTEM_PROMPT
from vlmeval_prm.prm.hf_backend import TransformersPRM

QUESTION = "How many red shapes are there?"


@pytest.fixture(scope="module")
def prm(tmp_path_factory):
    path = tiny_vlm("qwen2_5_vl", tmp_path_factory.mktemp("tiny_vlms"))
    return TransformersPRM(path, format="vl-prm", share_prefix=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    paths = []
    for k, (size, colour) in enumerate((((400, 300), "red"), ((224, 224), (0, 0, 255, 128)))):
        path = root / f"{k}.png"
        Image.new("RGBA" if len(colour) == 4 else "RGB", size, colour).save(path)
        paths.append(str(path))
    return paths


def test_system_prompt_is_the_one_python_keeps():
    """The later of prompts.py's two definitions; its sha256 as read from the file."""
    assert len(VL_PRM_SYSTEM_PROMPT) == 832
    assert hashlib.sha256(VL_PRM_SYSTEM_PROMPT.encode()).hexdigest() == (
        "c45b74bef0d6afde015dbfa30fc2ed476fb63a5516a99a6fee6c69390911bb5f"
    )
    assert "first solution step.  \nSubsequent rounds" in VL_PRM_SYSTEM_PROMPT


def test_golden_prompt_of_a_step(prm):
    """What get_reward renders to score the second step: the image first in the first user turn, no break
    before ``### Question:``, the earlier step followed by an assistant "+", the scored step as the last user
    turn, the generation prompt; steps as its search cuts them (a trailing blank line but on the last)."""
    fmt = build_format("vl-prm")
    messages = fmt.messages(QUESTION, ["There are 3 shapes.", "2 are red.", "Answer: 2"], 1)[:4]
    text = prm.inputs.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        f"<|im_start|>system\n{VL_PRM_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>### Question:\n"
        f"{QUESTION}\n\n### Solution Process:\nThere are 3 shapes.\n\n<|im_end|>\n"
        "<|im_start|>assistant\n+<|im_end|>\n"
        "<|im_start|>user\n2 are red.\n\n<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("size,tokens", [((400, 300), 285), ((224, 224), 256), ((1500, 1000), 1247)])
def test_images_are_resized_twice_as_its_code_does(prm, tmp_path, size, tokens):
    """qwen_vl_utils' resize, then the processor's within VL-PRM's pixel bounds: the image token counts of
    the reference (computed with both libraries' smart_resize; one resize would give 266 for 400x300)."""
    path = tmp_path / "x.png"
    Image.new("RGB", size, "white").save(path)
    enc = prm.inputs.encode(["<|vision_start|><|image_pad|><|vision_end|>x"], prm.inputs.images([str(path)]))
    pad = prm.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((enc["input_ids"] == pad).sum()) == tokens


def test_rgba_is_composited_on_white(prm, images):
    pixel = prm.inputs.images(images[1:])[0].getpixel((5, 5))
    assert pixel == (127, 127, 255)  # half-transparent blue over white (PIL rounds 127.5 down)


def reference_scores(prm, question: str, steps: list[str], paths: list[str]) -> list[float]:
    """get_reward, once per step: the conversation up to that step's user turn, the generation prompt,
    one forward pass, softmax over the "+" and "-" logits at the last position."""
    fmt = build_format("vl-prm")
    processor, model = prm.inputs.processor, prm.inputs.model
    plus, minus = (prm.tokenizer.encode(t, add_special_tokens=False)[0] for t in "+-")
    images = prm.inputs.images(paths)
    out = []
    for k in range(len(steps)):
        messages = fmt.messages(question, steps, len(paths))[: (2 if fmt.system_prompt else 1) + 2 * k]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = {"images": [images]} if images else {}
        inputs = processor(text=[text], padding=True, return_tensors="pt", **kwargs, **fmt.processor_kwargs)
        with torch.inference_mode():
            logits = model(**inputs).logits[:, -1, :].float()
        out.append(torch.softmax(logits[:, [plus, minus]], dim=-1)[0, 0].item())
    return out


@pytest.mark.parametrize("n_images", [1, 2])
def test_one_pass_scores_equal_its_per_step_passes(prm, images, n_images):
    steps = ["There are 3 shapes.", "2 of them are red.", "Answer: 2"]
    other = ["I count the shapes.", "Answer: 3"]
    got = prm.score(QUESTION, images[:n_images], [steps, other])
    for cand, res in zip([steps, other], got):
        assert res.ok, res.error
        expected = reference_scores(prm, QUESTION, cand, images[:n_images])
        assert res.scores == pytest.approx(expected, abs=1e-5)
    assert len(set(got[0].scores)) == 3  # distinct values: each step read at its own position


def test_format_is_checked_before_any_work():
    listed = ", ".join(sorted(FORMATS))
    assert "vl-prm" in listed and "visualprm" in listed
    with pytest.raises(ValueError, match=f"unknown PRM format 'vl_prm'; registered formats: {listed}"):
        validate_spec("transformers:tiny:prm", {"format": "vl_prm"})
    with pytest.raises(ValueError, match="the vl-prm format has no lmdeploy backend"):
        validate_spec("lmdeploy:http://127.0.0.1:9", {"format": "vl-prm"})


@pytest.mark.e2e
def test_best_of_n_with_a_vl_prm_prm_through_vlmeval_run(tmp_path, tiny_paths):
    """``python -m vlmeval.run --config`` (or a checkout's run.py): Best-of-2 of the tiny policy scored by
    the tiny Qwen2.5-VL in the vl-prm format; every candidate's steps are scored and the scores are keyed
    by the vl-prm format."""
    from commands import MiniRows, run_tiny_bon

    path = tiny_vlm("qwen2_5_vl", tmp_path / "tiny_vlms")
    rows, spec = MiniRows(3), f"transformers:{path}"
    store = run_tiny_bon(tmp_path, "VLPRM-BoN2", spec, {"format": "vl-prm"}, rows)
    assert len(store) == rows.rows
    scored = [entry.score(i, spec) for entry in store.values() for i in range(2)]
    assert all(r is not None and r.usable for r in scored)
    assert all(len(r.step_scores) == len(r.steps) for r in scored)


# -- served by vLLM ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_chat(prm):
    """``vllm serve`` stand-in (vLLM has no CPU build here): tests/standins/vllm_standin.py, vLLM 0.34's
    chat schema with prompt logprobs, serving the same tiny Qwen2.5-VL; ``--max-logprobs -1``."""
    from standins.vllm_standin import serve_vllm_standin

    path = prm.identity.removeprefix("transformers:")
    with serve_vllm_standin(path, "ob11/Qwen-VL-PRM-7B", chat=True, max_logprobs=-1) as served:
        yield served


def test_vllm_scores_equal_in_process_scores(prm, images, vllm_chat):
    """All prompt logprobs (k = -1): the same numbers as in process, one chat request per candidate carrying
    the images as VL-PRM opens them and its processor's pixel bounds."""
    from vlmeval_prm.prm import build_scorer

    url, seen = vllm_chat
    scorer = build_scorer(f"vllm:{url}", format="vl-prm", top_logprobs=-1)
    solutions = [["There are 3 shapes.", "2 of them are red.", "Answer: 2"], ["Answer: 3"]]
    try:
        got = scorer.score(QUESTION, images[:1], solutions)
    finally:
        scorer.close()
    for res, ref in zip(got, prm.score(QUESTION, images[:1], solutions)):
        assert res.ok and res.bounds is None, res.error
        assert res.scores == pytest.approx(ref.scores, abs=1e-5)
    body = seen.requests[-1]
    assert body["prompt_logprobs"] == -1 and body["return_token_ids"] is True and body["max_tokens"] == 1
    assert body["mm_processor_kwargs"] == {"min_pixels": 200704, "max_pixels": 1003520}
    assert body["messages"][1]["content"][0]["type"] == "image_url"  # the image first, then the question


def test_a_label_below_the_top_k_bounds_the_score(prm, images, vllm_chat):
    """k = 1: "+" is always reported (the prompt's own token), "-" only when it ranks first; without it the
    score is a lower bound computed from the k-th logprob, as the LMDeploy client reports it."""
    from vlmeval_prm.prm import build_scorer

    url, _ = vllm_chat
    exact = prm.score(QUESTION, images[:1], [["There are 3 shapes.", "Answer: 2"]])[0]
    scorer = build_scorer(f"vllm:{url}", format="vl-prm", top_logprobs=1)
    try:
        (res,) = scorer.score(QUESTION, images[:1], [["There are 3 shapes.", "Answer: 2"]])
    finally:
        scorer.close()
    assert res.scores is not None and res.bounds is not None
    for value, bound, true in zip(res.scores, res.bounds, exact.scores):
        if bound == "lower":
            assert value <= true + 1e-6
        elif bound == "upper":
            assert value >= true - 1e-6
        else:
            assert value == pytest.approx(true, abs=1e-5)


@pytest.mark.e2e
def test_best_of_n_scored_on_vllm_and_rescored_when_what_it_is_shown_changes(tmp_path, vllm_chat, tiny_paths):
    """``vlmeval.run --config`` with a ``vllm:`` vl-prm PRM: every candidate scored by one chat request; the same
    rerun asks for no score; a rerun with another system prompt scores every candidate again."""
    import json

    from commands import MiniRows, run_tiny_bon

    url, seen = vllm_chat
    rows, spec, model = MiniRows(2), f"vllm:{url}", "VLLM-BoN2"

    def scored() -> set:  # the candidates asked about (a retried request asks again, on a busy machine)
        return {json.dumps(r["messages"]) for r in seen.requests if "prompt_logprobs" in r}

    def run(options: dict) -> tuple[int, dict]:
        before, first = scored(), len(seen.requests)
        store = run_tiny_bon(tmp_path, model, spec, options, rows)
        new = {json.dumps(r["messages"]) for r in seen.requests[first:] if "prompt_logprobs" in r}
        return len(new - before), store

    options = {"format": "vl-prm", "top_logprobs": -1}
    first, store = run(options)
    assert len(store) == rows.rows
    assert all(e.score(i, spec) is not None and e.score(i, spec).usable for e in store.values() for i in range(2))
    distinct = sum(len({e.text(i) for i in range(2)}) for e in store.values())  # equal candidates: one request
    assert first == distinct
    assert run(options)[0] == 0
    assert run({**options, "system_prompt": "Judge each step: + or -."})[0] == distinct
