"""Answer extraction. The MCQ and Y/N cases run VLMEvalKit's real matchers (first one imports the
kit, about 10 s)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmeval_prm.select.answers import answer_segment, extract_answer, normalize_answer

CHOICES = {"A": "3 apples", "B": "45 degrees", "C": "red", "D": "none of these"}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Step 1: B looks wrong, and A too.\n\nStep 2: so C.\n\nThe answer is (C).", "C"),
        ("Compare the angles.\n\nThus \\boxed{B}", "B"),
        ("Answer: 45 degrees", "B"),  # option text, through can_infer_text
        ("**Final answer:** D", "D"),
        ("After all this, I pick A", "A"),  # no marker: the whole response, letter near the end
    ],
)
def test_multiple_choice_uses_vlmevalkit_matching(text, expected):
    assert extract_answer(text, "MCQ", CHOICES) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Cannot determine the answer",  # can_infer's "Z"
        "A and B both look plausible, as does C.\n\nHard to say.",
        "Failed to obtain answer via API.",
    ],
)
def test_multiple_choice_without_a_clear_option_is_none(text):
    assert extract_answer(text, "MCQ", CHOICES) is None


def test_z_is_kept_when_it_is_a_real_option():
    assert extract_answer("The answer is Z", "MCQ", {**CHOICES, "Z": "zebra"}) == "Z"


def test_choices_are_not_mutated():
    choices = dict(CHOICES)
    extract_answer("Answer: RED", "Video-MCQ", choices)
    assert choices == CHOICES


@pytest.mark.parametrize(
    "text,expected",
    [
        ("**Answer:** (B)", "B"),
        ("The answer is C.", "C"),
        ("Answer: A triangle", None),
    ],
)
def test_multiple_choice_without_choices_takes_a_lone_letter(text, expected):
    assert extract_answer(text, "MCQ", None) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("I see a dog, no cat.\n\nAnswer: No.", "No"),
        ("Yes, it is.", "Yes"),
        ("Is it yes or no? Unclear.", None),
    ],
)
def test_yes_no_uses_vlmevalkit_extraction(text, expected):
    assert extract_answer(text, "Y/N", None) == expected


@pytest.mark.parametrize(
    "a,b",
    [
        ("Answer: 3.50", "The answer is 3.5"),
        ("Answer: 1,000", "\\boxed{1000}"),
        ("The final answer is $0.5$.", "Answer: .5"),
        ("Answer:   Red   Car", "answer: red car"),
        ("Answer: \\text{red car}", "Answer: RED CAR."),
        ("Answer: 12.50%", "Answer: 12.5%"),
    ],
)
def test_free_form_answers_written_two_ways_get_one_key(a, b):
    assert extract_answer(a, "VQA") == extract_answer(b, "VQA") is not None


@pytest.mark.parametrize(
    "a,b",
    [
        ("Answer: 1,2", "Answer: 12"),
        ("Answer: 3.5", "Answer: 35"),
        ("Answer: -2", "Answer: 2"),
    ],
)
def test_different_answers_stay_different(a, b):
    assert extract_answer(a, "VQA") != extract_answer(b, "VQA")


def test_last_boxed_wins_and_nested_braces_survive():
    text = "First guess \\boxed{2}.\n\nCorrection: \\boxed{\\frac{1}{2}}"
    assert answer_segment(text) == "\\frac{1}{2}"
    assert extract_answer("\\boxed{\\frac{1}{2}", "VQA") is None  # cut off mid-answer


@pytest.mark.parametrize("text", [None, "", "   ", "Step 1: think.\n\nStep 2: think more.", "The answer is"])
def test_unparseable_is_none(text):
    assert extract_answer(text, "VQA") is None


@pytest.mark.parametrize(
    "raw,key",
    [
        ("3.50", "3.5"),
        ("1,000", "1000"),
        ("+2", "2"),
        ("-0.0", "0"),
        ("1e3", "1000"),
        ("1,000.50", "1000.5"),
        ("$x^2$", "x^2"),
    ],
)
def test_normalize_answer(raw, key):
    assert normalize_answer(raw) == key


# -- numbers at the dataset's precision, options by letter, never raising, idempotent ------------------
@pytest.mark.parametrize(
    "a,b,precision",
    [
        ("The answer is 3.14159", "Answer: 3.14", 2),
        ("Answer: 14.0", "\\boxed{14}", 0),
        ("Answer: 2.4999", "The answer is 2.5", 1),
        ("The answer is 1/2", "Answer: 0.50", None),
        ("Answer: \\frac{3}{4}", "Answer: 0.75", 2),
    ],
)
def test_numbers_compare_at_the_dataset_precision(a, b, precision):
    assert extract_answer(a, "VQA", precision=precision) == extract_answer(b, "VQA", precision=precision) is not None


def test_precision_does_not_merge_what_differs_at_it():
    assert extract_answer("Answer: 3.14", "VQA", precision=2) != extract_answer("Answer: 3.15", "VQA", precision=2)
    assert extract_answer("Answer: 3.14159", "VQA") != extract_answer("Answer: 3.14", "VQA")


def test_free_form_question_with_options_votes_by_letter():
    """MathVista's multi-choice rows are type VQA with a list of options: the key is the letter."""
    choices = {"A": "3/11", "B": "8/11", "C": "6/11", "D": "3/5"}
    keys = {extract_answer(t, "VQA", choices) for t in ("The answer is (B) 8/11", "Answer: 8/11", "\\boxed{B}")}
    assert keys == {"B"}


@pytest.mark.parametrize(
    "text",
    [
        "1E1000000",
        "Answer: 1e-1000000",
        "Answer: -1E+999999999",
        "\\boxed{1/0}",
        "Answer: 99999999999999999999999999999999999999999999999999999",
        "Answer: 1e99999999999999999999",
        "\x00\x00",
        "答案是：",
        "Answer: ％",
    ],
)
@pytest.mark.parametrize("kind", ["VQA", "MCQ", "Y/N"])
def test_extraction_never_raises(text, kind):
    key = extract_answer(text, kind, {"A": "1", "B": "2"} if kind == "MCQ" else None, precision=2)
    assert key is None or extract_answer(key, kind, {"A": "1", "B": "2"} if kind == "MCQ" else None, 2) == key


def test_huge_numbers_get_a_short_stable_key():
    key = extract_answer("1E1000000", "VQA")
    assert key == "1e+1000000" and normalize_answer(key) == key


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.sampled_from([None, 0, 2]))
def test_normalize_is_idempotent_and_total(raw, precision):
    once = normalize_answer(raw, precision)
    assert once is None or normalize_answer(once, precision) == once


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.from_regex(r"(The answer is|Answer:) [-+]?\d{1,6}(\.\d{1,4})?(e\d{1,9})?%?", fullmatch=True),
    ),
    st.sampled_from(["VQA", "MCQ"]),
    st.sampled_from([None, 1, 3]),
)
def test_extract_is_idempotent_and_total(text, kind, precision):
    choices = {"A": "red", "B": "12", "C": "none"} if kind == "MCQ" else None
    key = extract_answer(text, kind, choices, precision)
    assert key is None or extract_answer(key, kind, choices, precision) == key


def test_a_json_answer_field_is_the_answer():
    """DynaMath asks for JSON with a "short answer" key."""
    text = 'Step 1: compute.\n\n{"solution": "Add them; the answer is 3", "short answer": "3.1416"}'
    assert answer_segment(text) == "3.1416"
    assert extract_answer(text, "VQA", precision=3) == extract_answer("The answer is 3.142", "VQA", precision=3)
    assert extract_answer('{"short answer": "B"}', "MCQ") == "B"
