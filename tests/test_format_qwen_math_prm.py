"""The ``qwen-math-prm`` format (Qwen2.5-Math-PRM, text only) against its published scoring code: the model
card of Qwen/Qwen2.5-Math-PRM-7B (README: the messages and ``make_step_rewards``, transcribed below) and
vLLM's port of its weights (``vllm/model_executor/models/qwen2_rm.py``, 0.34.0 62d4bc3c7: the two-layer
head). The checkpoint cannot be downloaded here: tests/standins/qwen2_rm_remote.py stands in for it.
"""

import logging

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from standins.qwen2_rm_remote import write_checkpoint
from vlmeval_prm.prm.formats.qwen_math_prm import QWEN_MATH_SYSTEM_PROMPT
from vlmeval_prm.prm.hf_backend import TransformersPRM

QUESTION = "Sue has 3 apples and buys 4 more. How many apples does she have?"
SOLUTIONS = [["She starts with 3.", "3 + 4 = 7.", "The answer is \\boxed{7}."], ["3 + 4 = 8.", "\\boxed{8}"]]


@pytest.fixture(scope="module")
def prm(tmp_path_factory):
    return TransformersPRM(write_checkpoint(tmp_path_factory.mktemp("qwen_prm")), format="qwen-math-prm")


def test_golden_conversation(prm):
    """The card's messages through the chat template, no generation prompt: steps joined by <extra_0>,
    one more after the last."""
    assert prm.inputs.render(QUESTION, SOLUTIONS[1], 0) == (
        f"<|im_start|>system\n{QWEN_MATH_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n"
        "<|im_start|>assistant\n3 + 4 = 8.<extra_0>\\boxed{8}<extra_0><|im_end|>\n"
    )
    assert QWEN_MATH_SYSTEM_PROMPT == "Please reason step by step, and put your final answer within \\boxed{}."


def make_step_rewards(logits, token_masks):
    """Verbatim from the model card."""
    probabilities = F.softmax(logits, dim=-1)
    probabilities = probabilities * token_masks.unsqueeze(-1)  # bs, seq_len, num_labels

    all_scores_res = []
    for i in range(probabilities.size(0)):
        sample = probabilities[i]  # seq_len, num_labels
        positive_probs = sample[sample != 0].view(-1, 2)[:, 1]  # valid_tokens, num_labels
        non_zero_elements_list = positive_probs.cpu().tolist()
        all_scores_res.append(non_zero_elements_list)
    return all_scores_res


def reference_scores(prm, steps: list[str]) -> list[float]:
    """The card's recipe: apply_chat_template of its messages, encode, one forward, make_step_rewards."""
    tokenizer, model = prm.tokenizer, prm.model
    messages = [
        {"role": "system", "content": QWEN_MATH_SYSTEM_PROMPT},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
    ]
    conversation_str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    input_ids = tokenizer.encode(conversation_str, return_tensors="pt")
    with torch.no_grad():
        outputs = model(input_ids=input_ids)
    step_sep_id = tokenizer.encode("<extra_0>")[0]
    return make_step_rewards(outputs[0], input_ids == step_sep_id)[0]


def test_scores_equal_the_cards_recipe(prm):
    got = prm.score(QUESTION, [], SOLUTIONS)  # one batch, right-padded
    for res, steps in zip(got, SOLUTIONS):
        assert res.ok, res.error
        assert res.scores == pytest.approx(reference_scores(prm, steps), abs=1e-6)
    assert len({round(s, 4) for s in got[0].scores}) == 3  # every step read at its own separator


def test_images_are_not_shown_and_that_is_said(prm, tmp_path, caplog):
    path = tmp_path / "x.png"
    Image.new("RGB", (32, 32), "red").save(path)
    with caplog.at_level(logging.WARNING):
        with_image = prm.score(QUESTION, [str(path)], SOLUTIONS[:1])[0]
    assert with_image.scores == pytest.approx(prm.score(QUESTION, [], SOLUTIONS[:1])[0].scores, abs=1e-7)
    assert "qwen-math-prm is a text PRM: the questions' images are not shown to it" in caplog.text


def test_prms_lists_every_format_with_its_backends(capsys):
    import json

    from vlmeval_prm.host import cli

    assert cli.main(["prms", "--json"]) == 0
    rows = {r["format"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == ["mm-prm", "qwen-math-prm", "ursa-rm", "visualprm", "vl-prm"]
    assert rows["visualprm"]["default"] and rows["visualprm"]["backends"] == ["transformers", "lmdeploy"]
    assert rows["qwen-math-prm"]["backends"] == ["transformers", "vllm"]
    assert rows["ursa-rm"]["head"] == "sigmoid" and rows["ursa-rm"]["detected_from"] == ["ursa"]
    assert rows["visualprm"]["labels"] == ["+", "-"] and rows["qwen-math-prm"]["labels"] is None


def test_check_prm_passes_with_the_format(prm, capsys):
    from vlmeval_prm.host import cli

    path = prm.identity.removeprefix("transformers:")
    assert cli.main(["check-prm", f"transformers:{path}", "--options", '{"format": "qwen-math-prm"}']) == 0
    out = capsys.readouterr().out
    assert "the qwen-math-prm format reads its softmax head at each '<extra_0>'" in out
    assert "verdict: PASS" in out and "P(class 1) per step" in out


# -- served by vLLM ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_server(prm):
    """``vllm serve`` stand-in (vLLM has no CPU build here): tests/standins/vllm_standin.py, vLLM 0.34's schema."""
    from standins.vllm_standin import serve_vllm_standin

    with serve_vllm_standin(prm.identity.removeprefix("transformers:")) as served:
        yield served


def test_vllm_scores_equal_in_process_scores(prm, vllm_server):
    from vlmeval_prm.prm import build_scorer

    url, seen = vllm_server
    scorer = build_scorer(f"vllm:{url}", format="qwen-math-prm")
    try:
        got = scorer.score(QUESTION, [], SOLUTIONS)
    finally:
        scorer.close()
    for res, ref in zip(got, prm.score(QUESTION, [], SOLUTIONS)):
        assert res.ok, res.error
        assert res.scores == pytest.approx(ref.scores, abs=1e-6)
    bodies = seen.requests[-2:]
    assert all(b["task"] == "token_classify" and b["model"] == "Qwen/Qwen2.5-Math-PRM-7B" for b in bodies)
    last_turns = [b["messages"][-1] for b in bodies]
    assert {"role": "assistant", "content": "3 + 4 = 8.<extra_0>\\boxed{8}<extra_0>"} in last_turns


def test_a_failed_pooling_request_is_a_recorded_failure(vllm_server):
    from vlmeval_prm.prm import build_scorer

    url, seen = vllm_server
    scorer = build_scorer(f"vllm:{url}", format="qwen-math-prm", max_retries=0)
    try:
        seen.fail_next = 1
        (res,) = scorer.score(QUESTION, [], SOLUTIONS[:1])
    finally:
        scorer.close()
    assert res.scores is None and "500" in res.error and res.transient


def test_vllm_identity_is_the_served_model_and_the_format(vllm_server):
    from vlmeval_prm.prm import scorer_identity
    from vlmeval_prm.store.records import digest

    url, _ = vllm_server
    one = scorer_identity(f"vllm:{url}", {"format": "qwen-math-prm"})
    assert one["backend"] == "vllm" and one["model"] == "Qwen/Qwen2.5-Math-PRM-7B"
    assert one["format"]["name"] == "qwen-math-prm"
    other = scorer_identity(f"vllm:{url}", {"format": "qwen-math-prm", "system_prompt": "Check each step."})
    assert digest(one) != digest(other)  # another prompt: the store rescores


def test_formats_without_a_vllm_reader_are_refused_up_front():
    from vlmeval_prm.prm import validate_spec

    with pytest.raises(ValueError, match="the visualprm format has no vllm backend"):
        validate_spec("vllm:http://127.0.0.1:9", {"format": "visualprm"})
    with pytest.raises(ValueError, match="the visualprm format has no vllm backend"):
        validate_spec("vllm:http://127.0.0.1:9")  # no format: the default, VisualPRM's


def test_the_format_is_detected_from_the_checkpoints_architecture(prm):
    """``Qwen2ForProcessRewardModel`` in config.json names this format alone: no option needed, the same identity."""
    from vlmeval_prm.prm import scorer_identity, spec_format

    spec = prm.identity
    assert spec_format(spec) == "qwen-math-prm"
    assert scorer_identity(spec) == scorer_identity(spec, {"format": "qwen-math-prm"})
    assert spec_format("transformers:tiny:prm") == "visualprm"  # an InternVL checkpoint names no format alone
