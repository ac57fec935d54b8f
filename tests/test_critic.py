"""Critic prompt and reply parser: one verdict per step, or None (never a guess)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vlmeval_prm.prm.critic import build_critic_prompt, parse_verdicts


@pytest.mark.parametrize(
    "reply, n, expected",
    [
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
        # A dash between the number and a symbol verdict is a separator, not the verdict.
        ("Step 1 - +\nStep 2 – -\nStep 3 — ✓", 3, [1, -1, 1]),
        # A verdict word ending the line.
        ("Step 1: the side is 4, so this is correct.\nStep 2: the sum 4 + 4 = 9 is wrong", 2, [1, -1]),
    ],
)
def test_parses_verdicts(reply, n, expected):
    assert parse_verdicts(reply, n) == expected


@pytest.mark.parametrize(
    "reply, n",
    [
        ("Step 1: +\nStep 2: -", 3),  # partial: step 3 has no verdict
        ("Step 1: +\nStep 2: -\nStep 3: +", 2),  # a step that does not exist
        ("Step 1: +\nStep 1: -", 1),  # contradiction
        ("The solution looks fine overall.", 2),
        ("Step 1: correctly reasoned", 1),  # "correctly" is not the verdict word
        ("+\n-", 3),  # bare lines must cover every step
        ("+\nthe rest is fine\n-", 2),  # bare lines must be alone
        ("", 1),
        (None, 1),
        ("Step 1: the slope is not wrong", 1),  # a negated verdict is too subtle to read
        ("Step 1: is the angle right", 1),  # "right" ending a line is not read as a verdict
    ],
)
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


# -- fuzzing: every format we accept round-trips, and no reply makes the parser raise -------------

LABEL_TEXT = {
    1: ["+", "correct", "Correct", "✓", "right", "valid", "no error"],
    -1: ["-", "incorrect", "Incorrect", "✗", "wrong", "−", "not correct"],
}
TEMPLATES = [
    "Step {k}: {v}",
    "**Step {k}:** {v}",
    "- Step {k} - {v}",
    "Step {k} - {v}",
    "{k}. {v}",
    "Step {k}: [{v}]",
    "## Step {k}: {v}",
    "Step {k} is {v}",
    "Step {k}: {v}. Because the count matches.",
]


@given(labels=st.lists(st.sampled_from([1, -1]), min_size=1, max_size=12), data=st.data())
def test_fuzz_formatted_verdicts_round_trip(labels, data):
    lines = []
    for k, label in enumerate(labels, 1):
        template = data.draw(st.sampled_from(TEMPLATES))
        word = data.draw(st.sampled_from(LABEL_TEXT[label]))
        if template.startswith("Step {k} is") and word in ("+", "-", "−", "✓", "✗"):
            template = "Step {k}: {v}"
        lines.append(template.format(k=k, v=word))
    order = data.draw(st.permutations(range(len(lines))))
    assert parse_verdicts("\n".join(lines[i] for i in order), len(labels)) == labels


@given(reply=st.text(max_size=300), n=st.integers(min_value=-1, max_value=15))
def test_fuzz_any_reply_gives_labels_or_none(reply, n):
    got = parse_verdicts(reply, n)
    assert got is None or (len(got) == n and set(got) <= {1, -1})
