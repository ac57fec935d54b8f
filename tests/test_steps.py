import pytest

from vlmeval_prm.steps import split_steps


def test_blank_lines_separate_steps():
    assert split_steps("First, count.\n\nThen add.\n\nAnswer: B") == ["First, count.", "Then add.", "Answer: B"]


def test_blank_line_with_spaces_and_crlf_counts_as_separator():
    assert split_steps("a\r\n\r\nb\n  \t\nc") == ["a", "b", "c"]


def test_no_blank_lines_is_one_step():
    assert split_steps("Step 1: x\nStep 2: y") == ["Step 1: x\nStep 2: y"]


@pytest.mark.parametrize("text", ["", None, "   ", "\n\n\n", " \n \n\t"])
def test_empty_or_whitespace_has_no_steps(text):
    assert split_steps(text) == []


def test_more_than_max_steps_are_merged_evenly():
    pieces = [f"s{i}" for i in range(30)]
    steps = split_steps("\n\n".join(pieces), max_steps=12)
    # ceil(30 / 12) = 3 pieces per step -> 10 steps, order and content preserved
    assert len(steps) == 10
    assert steps[0] == "s0\n\ns1\n\ns2"
    assert "\n\n".join(steps) == "\n\n".join(pieces)


@pytest.mark.parametrize("n", [12, 13, 24, 25, 100])
def test_merged_count_never_exceeds_max(n):
    steps = split_steps("\n\n".join(f"p{i}" for i in range(n)), max_steps=12)
    assert 1 <= len(steps) <= 12
    assert sum(s.count("p") for s in steps) == n


def test_unicode_is_kept_intact():
    text = "面积是 πr² ≈ 3.14\n\n答案：C ✓"
    assert split_steps(text) == ["面积是 πr² ≈ 3.14", "答案：C ✓"]


def test_very_long_response():
    step = "x" * 10_000
    steps = split_steps("\n\n".join([step] * 50))
    assert len(steps) == 10 and all(len(s) == 5 * 10_000 + 4 * 2 for s in steps)


def test_invalid_max_steps():
    with pytest.raises(ValueError):
        split_steps("a", max_steps=0)
