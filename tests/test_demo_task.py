"""The demo's synthetic task and its VLMEvalKit dataset: deterministic, exactly checkable, and the prompt
the demo policy is trained on is the one VLMEvalKit and Best-of-N really send (golden tests against
the real ``ImageMCQDataset.build_prompt`` and ``BestOfN.prompt_message``)."""

import random
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vlmeval_prm.demo.task import (
    OPTIONS,
    final_answer,
    is_correct,
    make_problem,
    mcq_prompt,
    noisy_solution,
    problem_image,
    solution,
)
from vlmeval_prm.steps import split_steps


def test_problems_are_deterministic_and_splits_differ():
    assert make_problem("test", 7) == make_problem("test", 7)
    assert np.array_equal(
        np.asarray(problem_image(make_problem("test", 7))), np.asarray(problem_image(make_problem("test", 7)))
    )
    train = {(p.scene, p.question) for p in map(lambda i: make_problem("train", i), range(200))}
    test = [(p.scene, p.question) for p in map(lambda i: make_problem("test", i), range(200))]
    assert sum(t in train for t in test) < 20  # independent streams (a few coincidences are possible)
    with pytest.raises(ValueError, match="unknown split"):
        make_problem("dev", 0)


def test_every_option_occurs_and_no_single_answer_dominates():
    counts = Counter(make_problem("test", i).answer for i in range(400))
    assert set(counts) == set(OPTIONS)
    assert max(counts.values()) / 400 < 0.35  # always guessing one letter stays far below the trained policy


def test_reference_solution_has_four_steps_and_is_correct():
    for i in range(50):
        p = make_problem("test", i)
        text = solution(p)
        assert len(split_steps(text)) == 4
        assert is_correct(p, text)
        assert final_answer(text) == OPTIONS[p.count]


def test_noisy_demonstrations_stay_consistent_with_their_mistakes():
    rng, wrong = random.Random(0), 0
    for i in range(300):
        p = make_problem("train", i)
        steps = split_steps(noisy_solution(p, rng, cell_error=0.3, count_error=0.3))
        total = int(steps[2].rstrip(".").rsplit("= ", 1)[1])
        assert steps[3] == f"The answer is {OPTIONS[total]}."  # the answer follows the stated count
        wrong += not is_correct(p, "\n\n".join(steps))
    assert 0.2 < wrong / 300 < 0.8


def test_guesses_are_one_step_uniform_answers_right_a_fifth_of_the_time():
    rng = random.Random(0)
    problems = [make_problem("train", i) for i in range(2000)]
    texts = [noisy_solution(p, rng, cell_error=0.0, count_error=0.0, guess_rate=1.0) for p in problems]
    assert all(len(split_steps(t)) == 1 and final_answer(t) in OPTIONS for t in texts)
    assert 0.17 < sum(map(is_correct, problems, texts)) / len(texts) < 0.23  # blind: 1 in 5 options
    rng = random.Random(1)
    mixed = [noisy_solution(p, rng, cell_error=0.0, count_error=0.0, guess_rate=0.5) for p in problems[:400]]
    worked = [(p, t) for p, t in zip(problems, mixed) if len(split_steps(t)) == 4]
    assert 0.4 < len(worked) / 400 < 0.6
    assert all(is_correct(p, t) for p, t in worked)  # no noise: worked = right


def test_prompts_match_vlmevalkit_and_best_of_n(tmp_path, monkeypatch):
    monkeypatch.setenv("LMUData", str(tmp_path))
    import vlmeval.config  # noqa: F401  (the plugin registers its datasets)
    from vlmeval.dataset import build_dataset

    from vlmeval_prm.datasets.shapes import SHAPES, TEST_SIZE, VLMEvalPRMShapes
    from vlmeval_prm.demo.train import policy_text
    from vlmeval_prm.host.bon import DEFAULT_STEP_PROMPT, BestOfN

    ds = build_dataset(SHAPES)
    assert isinstance(ds, VLMEvalPRMShapes) and len(ds.data) == TEST_SIZE and ds.TYPE == "MCQ"
    for i in (0, 1, TEST_SIZE - 1):
        msgs = ds.build_prompt(ds.data.iloc[i])
        p = make_problem("test", i)
        (image,) = [m["value"] for m in msgs if m["type"] == "image"]
        (text,) = [m["value"] for m in msgs if m["type"] == "text"]
        assert text == mcq_prompt(p)
        assert ds.data.iloc[i]["answer"] == p.answer
        with Image.open(image) as im:  # the dumped image has exactly the rendered pixels
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(problem_image(p)))
        sent = BestOfN.prompt_message(SimpleNamespace(step_prompt=DEFAULT_STEP_PROMPT), msgs)
        assert [m["value"] for m in sent if m["type"] == "text"] == [policy_text(p)]
