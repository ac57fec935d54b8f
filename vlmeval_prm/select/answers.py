"""Final answers for voting: the same answer written two ways must get one vote key.

Where the answer sits (the fallback, used by every dataset type): the last ``\\boxed{...}`` (none if
it is cut off), else the first line after the last "answer is" or "answer:" (any case, so also
"The final answer is" and "Answer:"; and "答案是/为/："), else the whole response when it is a
single line. Then, by VLMEvalKit dataset type:

- multiple choice (type contains "MCQ") with ``choices``: VLMEvalKit's own ``can_infer`` (option
  letter, else option text) on that segment, then on the whole response. Its "Z" (no answer) is
  None unless "Z" is a real option. Without ``choices``: a lone option letter such as "(B)".
- yes/no (type contains "Y/N"): VLMEvalKit's ``YOrN_Extraction`` on the segment, then on the whole
  response; "Unknown" is None.
- anything else: the segment, normalised (``normalize_answer``).

VLMEvalKit is imported on first use only: importing it loads the whole kit (about 10 s).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import cache

_MARKER = re.compile(r"answer\s*(?:is\b\s*[:：]?|[:：])|答案\s*(?:是|为|[:：])", re.IGNORECASE)
_LONE_LETTER = re.compile(r"^(?:\(([A-Z])\)|([A-Z])(?:[.:)]|$))")
_TEXT_WRAPPER = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}")
_WRAPPING = re.compile(r"^[\s$*`'\"]+|[\s$*`'\".]+$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


@cache
def _vlmeval_matchers() -> tuple[Callable, Callable]:
    from vlmeval.dataset.utils.yorn import YOrN_Extraction
    from vlmeval.utils.matching_util import can_infer

    return can_infer, YOrN_Extraction


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None  # unbalanced: cut off mid-answer


def answer_segment(text: str) -> str | None:
    """The part of a response that states the final answer (see the module docstring)."""
    if "\\boxed{" in text:
        return (_last_boxed(text) or "").strip() or None
    markers = list(_MARKER.finditer(text))
    if markers:
        rest = text[markers[-1].end():].strip()
        line = rest.splitlines()[0].strip(" *_:：") if rest else ""
        return line or None
    stripped = text.strip()
    return stripped if stripped and "\n" not in stripped else None


def _canonical_number(s: str) -> str | None:
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if not _NUMBER.match(s):
        return None
    try:
        d = Decimal(s).normalize()
    except InvalidOperation:
        return None
    return format(d if d != 0 else Decimal(0), "f")


def normalize_answer(answer: str) -> str | None:
    """Casefold, squeeze whitespace, drop wrappers ($, \\text{}, **, quotes, a final period), and
    write numbers one way: "3.50" -> "3.5", "1,000" -> "1000", "+2" -> "2". None when empty."""
    s = _TEXT_WRAPPER.sub(r"\1", answer)
    s = _WRAPPING.sub("", " ".join(s.split()))
    if s.endswith("%"):
        number = _canonical_number(s[:-1].strip())
        s = f"{number}%" if number is not None else s
    else:
        s = _canonical_number(s) or s
    return s.casefold() or None


def _mcq(text: str, choices: dict | None) -> str | None:
    segment = answer_segment(text)
    if not choices:
        m = _LONE_LETTER.match(segment or "")
        return (m.group(1) or m.group(2)) if m else None
    can_infer = _vlmeval_matchers()[0]
    for part in (segment, text):
        if part:
            # can_infer lowercases the option texts of the dict it gets: hand it a copy
            option = can_infer(part, {k: str(v) for k, v in choices.items()})
            if option and (option != "Z" or "Z" in choices):
                return option
    return None


def _yes_no(text: str, choices: dict | None) -> str | None:
    yorn = _vlmeval_matchers()[1]
    for part in (answer_segment(text), text):
        if part:
            verdict = yorn(part)
            if verdict != "Unknown":
                return verdict
    return None


def _free_form(text: str, choices: dict | None) -> str | None:
    segment = answer_segment(text)
    return normalize_answer(segment) if segment else None


_EXTRACTORS: dict[str, Callable[[str, dict | None], str | None]] = {"MCQ": _mcq, "Y/N": _yes_no}


def extract_answer(text: str | None, dataset_type: str, choices: dict | None = None) -> str | None:
    """The vote key of a response's final answer; None when none can be found.

    ``dataset_type`` is VLMEvalKit's ``DATASET_TYPE`` (e.g. "MCQ", "Y/N", "VQA", "Video-MCQ");
    ``choices`` maps option letters to option texts for multiple choice.
    """
    if not text or not text.strip():
        return None
    family = next((f for f in _EXTRACTORS if f in dataset_type.upper()), None)
    return _EXTRACTORS.get(family, _free_form)(text, choices)
