"""The in-process transformers PRM on the tiny InternVL PRM (random weights, built locally)."""

import pytest
import torch
from PIL import Image

from vlmeval_prm.prm import build_scorer
from vlmeval_prm.prm.formats.visualprm import VisualPRMFormat


@pytest.fixture(scope="module")
def prm(tiny_paths):
    return build_scorer(f"transformers:{tiny_paths['prm']}", batch_size=4)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "shape.png"
    Image.new("RGB", (90, 70), (200, 30, 30)).save(path)
    return str(path)


CANDIDATES = [
    ["There are two circles.", "Two plus one is three.", "Answer: C"],
    ["The shape is red."],
    [f"step {i} ü ∑" for i in range(12)],
]


@pytest.mark.parametrize("n_steps", [1, 3, 12])
def test_conversation_has_one_placeholder_per_step(prm, n_steps):
    steps = [f"s{i}" for i in range(n_steps)]
    messages = VisualPRMFormat().messages("Q?", steps, 1)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * n_steps
    assert messages[1]["content"] == [
        {"type": "text", "text": "### Question:\n"},
        {"type": "image"},
        {"type": "text", "text": "Q?\n\n### Solution Process:\ns0"},
    ]
    ids = prm.tokenizer(prm.render("Q?", steps, 1), add_special_tokens=False)["input_ids"]
    assert len(prm.placeholder_positions(ids)) == n_steps


def test_no_system_turn_when_disabled():
    messages = VisualPRMFormat(system_prompt=None).messages("Q", ["a"], 0)
    assert messages[0]["role"] == "user"


def prefix_score(prm, question, image, steps, k):
    """Score of step k from a separate forward pass over the conversation up to step k."""
    messages = prm.fmt.messages(question, steps[: k + 1], 1)[:-1]  # drop the last "+"
    text = prm.inputs.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    with Image.open(image) as im:
        inputs = prm.inputs.processor(text=[text], images=[[im.convert("RGB")]], return_tensors="pt")
    with torch.inference_mode():
        logits = prm.model(**inputs).logits[0, -1].float()
    return torch.softmax(logits[[prm.good_id, prm.bad_id]], dim=-1)[0].item()


def test_one_pass_equals_scoring_every_prefix_separately(prm, image):
    results = prm.score("How many circles are there?", [image], CANDIDATES)
    for steps, res in zip(CANDIDATES, results):
        assert res.ok and len(res.scores) == len(steps)
        for k in range(len(steps)):
            assert abs(res.scores[k] - prefix_score(prm, "How many circles are there?", image, steps, k)) < 1e-4


def test_batched_equals_one_at_a_time(prm, image):
    together = prm.score("Q", [image], CANDIDATES)
    alone = [prm.score("Q", [image], [c])[0] for c in CANDIDATES]
    for a, b in zip(together, alone):
        assert a.scores == pytest.approx(b.scores, abs=1e-5)


def test_outcome_mode_scores_the_whole_response_as_one_step(prm, image):
    res = prm.score("Q", [image], [CANDIDATES[0]], mode="outcome")[0]
    assert res.steps == ["\n\n".join(CANDIDATES[0])] and len(res.scores) == 1


def test_failures_are_recorded_not_scored(prm, image, tmp_path):
    bad_image = tmp_path / "broken.png"
    bad_image.write_bytes(b"not a png")
    res = prm.score("Q", [str(bad_image)], [["a"], ["b"]])
    assert all(r.scores is None and "image could not be opened" in r.error for r in res)
    empty = prm.score("Q", [image], [[], ["fine"]])
    assert empty[0].scores is None and empty[0].error == "candidate has no steps"
    assert empty[1].ok


def test_context_length_overflow_is_a_per_candidate_failure(tiny_paths, image):
    short = build_scorer(f"transformers:{tiny_paths['prm']}", batch_size=4)
    short.max_length = 1000  # the system turn alone is about 700 tokens of the tiny tokenizer
    res = short.score("Q", [image], [["ok"], ["word " * 800]])
    assert res[0].ok
    assert res[1].scores is None and "context length exceeded" in res[1].error
