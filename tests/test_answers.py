"""Answer extraction. The MCQ and Y/N cases run VLMEvalKit's real matchers (first one imports the
kit, about 10 s)."""

import pytest

from vlmeval_prm.select.answers import answer_segment, extract_answer, normalize_answer

CHOICES = {"A": "3 apples", "B": "45 degrees", "C": "red", "D": "none of these"}


@pytest.mark.parametrize("text,expected", [
    ("Step 1: B looks wrong, and A too.\n\nStep 2: so C.\n\nThe answer is (C).", "C"),
    ("Compare the angles.\n\nThus \\boxed{B}", "B"),
    ("Answer: 45 degrees", "B"),  # option text, through can_infer_text
    ("**Final answer:** D", "D"),
    ("After all this, I pick A", "A"),  # no marker: the whole response, letter near the end
])
def test_multiple_choice_uses_vlmevalkit_matching(text, expected):
    assert extract_answer(text, "MCQ", CHOICES) == expected


@pytest.mark.parametrize("text", [
    "Cannot determine the answer",  # can_infer's "Z"
    "A and B both look plausible, as does C.\n\nHard to say.",
    "Failed to obtain answer via API.",
])
def test_multiple_choice_without_a_clear_option_is_none(text):
    assert extract_answer(text, "MCQ", CHOICES) is None


def test_z_is_kept_when_it_is_a_real_option():
    assert extract_answer("The answer is Z", "MCQ", {**CHOICES, "Z": "zebra"}) == "Z"


def test_choices_are_not_mutated():
    choices = dict(CHOICES)
    extract_answer("Answer: RED", "Video-MCQ", choices)
    assert choices == CHOICES


@pytest.mark.parametrize("text,expected", [
    ("**Answer:** (B)", "B"), ("The answer is C.", "C"), ("Answer: A triangle", None),
])
def test_multiple_choice_without_choices_takes_a_lone_letter(text, expected):
    assert extract_answer(text, "MCQ", None) == expected


@pytest.mark.parametrize("text,expected", [
    ("I see a dog, no cat.\n\nAnswer: No.", "No"),
    ("Yes, it is.", "Yes"),
    ("Is it yes or no? Unclear.", None),
])
def test_yes_no_uses_vlmevalkit_extraction(text, expected):
    assert extract_answer(text, "Y/N", None) == expected


@pytest.mark.parametrize("a,b", [
    ("Answer: 3.50", "The answer is 3.5"),
    ("Answer: 1,000", "\\boxed{1000}"),
    ("The final answer is $0.5$.", "Answer: .5"),
    ("Answer:   Red   Car", "answer: red car"),
    ("Answer: \\text{red car}", "Answer: RED CAR."),
    ("Answer: 12.50%", "Answer: 12.5%"),
])
def test_free_form_answers_written_two_ways_get_one_key(a, b):
    assert extract_answer(a, "VQA") == extract_answer(b, "VQA") is not None


@pytest.mark.parametrize("a,b", [
    ("Answer: 1,2", "Answer: 12"), ("Answer: 3.5", "Answer: 35"), ("Answer: -2", "Answer: 2"),
])
def test_different_answers_stay_different(a, b):
    assert extract_answer(a, "VQA") != extract_answer(b, "VQA")


def test_last_boxed_wins_and_nested_braces_survive():
    text = "First guess \\boxed{2}.\n\nCorrection: \\boxed{\\frac{1}{2}}"
    assert answer_segment(text) == "\\frac{1}{2}"
    assert extract_answer("\\boxed{\\frac{1}{2}", "VQA") is None  # cut off mid-answer


@pytest.mark.parametrize("text", [None, "", "   ", "Step 1: think.\n\nStep 2: think more.", "The answer is"])
def test_unparseable_is_none(text):
    assert extract_answer(text, "VQA") is None


@pytest.mark.parametrize("raw,key", [("3.50", "3.5"), ("1,000", "1000"), ("+2", "2"), ("-0.0", "0"),
                                     ("1e3", "1000"), ("1,000.50", "1000.5"), ("$x^2$", "x^2")])
def test_normalize_answer(raw, key):
    assert normalize_answer(raw) == key
