"""Critic prompt and reply parser: one verdict per step, or None (never a guess)."""

import pytest

from vlmeval_prm.datasets.critic import build_critic_prompt, parse_verdicts


@pytest.mark.parametrize("reply, n, expected", [
    ("Step 1: +\nStep 2: -\nStep 3: +", 3, [1, -1, 1]),
    ("**Step 1:** Correct\n**Step 2:** Incorrect", 2, [1, -1]),
    ("- Step 1 - correct\n- Step 2 is wrong", 2, [1, -1]),
    ("Step 1: ✓\nStep 2: ✗\nStep 3: ✔\nStep 4: ❌", 4, [1, -1, 1, -1]),
    ("Step 1: yes\nStep 2: No", 2, [1, -1]),
    ("Step 1: True.\nStep 2: false", 2, [1, -1]),
    ("Step 1 is not correct\nStep 2: no error", 2, [-1, 1]),
    ("1. +\n2) -", 2, [1, -1]),
    ("+\n-\n+", 3, [1, -1, 1]),
    ("`Step 1`: `+`\n## Step 2: $-$\n> Step 3: **−**", 3, [1, -1, -1]),
    ("Step 1: [+]\nStep 2: (-)", 2, [1, -1]),
    ("Step 1: +. The count is right.\nStep 2: - the sum is off", 2, [1, -1]),
    # Preamble and explanation lines without a leading verdict are skipped.
    ("Let me check each step.\nStep 1: The side is 4, fine.\n\nVerdicts:\nStep 1: +\nStep 2: -", 2, [1, -1]),
    # A step whose text starts with a negative number is not a verdict.
    ("Step 1: -5 is the slope\nStep 1: +", 1, [1]),
    # Reasoning inside <think> is ignored, even if it disagrees.
    ("<think>Step 1: -\nStep 2: +</think>\nStep 1: +\nStep 2: -", 2, [1, -1]),
    ("Step 1: +\nStep 1: +\nStep 2: -", 2, [1, -1]),  # repeated but consistent
])
def test_parses_verdicts(reply, n, expected):
    assert parse_verdicts(reply, n) == expected


@pytest.mark.parametrize("reply, n", [
    ("Step 1: +\nStep 2: -", 3),            # partial: step 3 has no verdict
    ("Step 1: +\nStep 2: -\nStep 3: +", 2),  # a step that does not exist
    ("Step 1: +\nStep 1: -", 1),             # contradiction
    ("The solution looks fine overall.", 2),
    ("Step 1: correctly reasoned", 1),       # "correctly" is not the verdict word
    ("+\n-", 3),                             # bare lines must cover every step
    ("+\nthe rest is fine\n-", 2),           # bare lines must be alone
    ("", 1),
    (None, 1),
])
def test_unparseable_replies_give_none(reply, n):
    assert parse_verdicts(reply, n) is None


def test_prompt_numbers_every_step_and_asks_for_the_parseable_format():
    steps = ["The square has side 4.\n", "Area is 8."]
    prompt = build_critic_prompt("What is the area?", steps)
    assert "What is the area?" in prompt
    assert "Step 1:\nThe square has side 4.\n\nStep 2:\nArea is 8." in prompt
    assert "exactly one verdict for each of the 2 steps" in prompt
    example = prompt.rsplit("for example:\n", 1)[1]
    assert parse_verdicts(example, 2) == [1, -1]  # the format we ask for is the format we read
