"""Final answers for voting: the same answer written two ways must get one vote key.

One normaliser, used by every vote (self-consistency, PRM-weighted vote) for every dataset. It never
raises and is idempotent: a vote key fed back in comes out unchanged.

Where the answer sits (the fallback, used by every dataset type): the last ``\\boxed{...}`` (none if
it is cut off), else the last JSON answer field (``"short answer": "2.5"``, as DynaMath asks for),
else the first line after the last "answer is" or "answer:" (any case, so also "The final answer is"
and "Answer:"; and "答案是/为/："), else the whole response when it is a single line. Then, by answer kind:

- options (``choices`` given, or a type containing "MCQ"): VLMEvalKit's own ``can_infer`` (option
  letter, else option text) on that segment, then on the whole response; the key is the LETTER, so
  "(B)" and the text of option B vote together. Its "Z" (no answer) is None unless "Z" is a real
  option. Without ``choices``: a lone option letter such as "(B)".
- yes/no (type contains "Y/N"): VLMEvalKit's ``YOrN_Extraction`` on the segment, then on the whole
  response; "Unknown" is None.
- anything else: the segment, normalised (``normalize_answer``); numbers are compared numerically,
  rounded to ``precision`` decimal places when the dataset states one (MathVista's ``precision``,
  DynaMath's three digits), so "3.14159" and "3.14" share a key at precision 2.

VLMEvalKit is imported on first use only: importing it loads the whole kit (about 10 s).
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from functools import cache

from vlmeval_prm.logs import get_logger

log = get_logger(__name__)

_MARKER = re.compile(r"answer\s*(?:is\b\s*[:：]?|[:：])|答案\s*(?:是|为|[:：])", re.IGNORECASE)
_JSON_ANSWER = re.compile(
    r'"(?:short answer|final answer|answer)"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|([^,}\n]+))', re.IGNORECASE
)
_LONE_LETTER = re.compile(r"^(?:\(([A-Z])\)|([A-Z])(?:[.:)]|$))")
_TEXT_WRAPPER = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}")
_WRAPPING = re.compile(r"^[\s$*`'\"]+|[\s$*`'\".]+$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_FRACTION = re.compile(r"^([+-]?)(?:\\d?frac\{(\d+)\}\{(\d+)\}|(\d+)\s*/\s*(\d+))$")
#: Arithmetic on vote keys: exact enough for any answer, and no overflow or other signal ever raises
#: (a response may say "1E1000000").
_CONTEXT = decimal.Context(prec=50, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])
#: Numbers beyond this many digits either side of the point are written in scientific notation.
_FIXED_DIGITS = 40
#: Rewriting passes before a key counts as settled (each pass only removes text, so few are needed).
_MAX_PASSES = 8


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
            return text[i + 1 : j]
    return None  # unbalanced: cut off mid-answer


def answer_segment(text: str) -> str | None:
    """The part of a response that states the final answer (see the module docstring)."""
    if "\\boxed{" in text:
        return (_last_boxed(text) or "").strip() or None
    fields = list(_JSON_ANSWER.finditer(text))
    if fields:
        value = fields[-1].group(1) if fields[-1].group(1) is not None else fields[-1].group(2)
        return value.strip() or None
    markers = list(_MARKER.finditer(text))
    if markers:
        rest = text[markers[-1].end() :].strip()
        line = rest.splitlines()[0].strip(" *_:：") if rest else ""
        return line or None
    stripped = text.strip()
    return stripped if stripped and "\n" not in stripped else None


def _decimal(s: str) -> Decimal | None:
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if _NUMBER.match(s):
        return Decimal(s)  # exact: construction is not bound by the context
    m = _FRACTION.match(s)
    if m and int(m.group(3) or m.group(5)) != 0:
        sign, num, den = m.group(1), m.group(2) or m.group(4), m.group(3) or m.group(5)
        return _CONTEXT.divide(Decimal(f"{sign}{num}"), Decimal(den))
    return None


def canonical_number(s: str, precision: int | None = None) -> str | None:
    """One spelling per number ("3.50", "+3.5", "7/2" at precision 0... ), or None for a non-number.

    ``precision``: decimal places to round to (half up) before comparing, as the dataset grades.
    """
    d = _decimal(s.strip())
    if d is None or not d.is_finite():
        return None
    if precision is not None and 0 <= precision <= _FIXED_DIGITS:
        rounded = d.quantize(Decimal(1).scaleb(-precision), rounding=ROUND_HALF_UP, context=_CONTEXT)
        d = rounded if rounded.is_finite() else d  # too large to round at that precision: keep it whole
    d = d.normalize(_CONTEXT)
    if d.is_zero():
        return "0"
    return format(d, "e") if abs(d.adjusted()) > _FIXED_DIGITS else format(d, "f")


def _normalize_once(s: str, precision: int | None) -> str:
    while True:  # innermost wrappers first: \text{\textbf{a}} needs two substitutions
        unwrapped = _TEXT_WRAPPER.sub(r"\1", s)
        if unwrapped == s:
            break
        s = unwrapped
    s = _WRAPPING.sub("", " ".join(s.split()))
    if s.endswith("%"):
        number = canonical_number(s[:-1], precision)
        return f"{number}%" if number is not None else s.casefold()
    return canonical_number(s, precision) or s.casefold()


def normalize_answer(answer: str, precision: int | None = None) -> str | None:
    """Casefold, squeeze whitespace, drop wrappers ($, \\text{}, **, quotes, a final period), and
    write numbers one way: "3.50" -> "3.5", "1,000" -> "1000", "+2" -> "2", "1/2" -> "0.5".
    Rewrites until nothing changes, so it is idempotent. None when empty."""
    s = answer
    for _ in range(_MAX_PASSES):
        again = _normalize_once(s, precision)
        if again == s:
            break
        s = again
    return s or None


def _options(text: str, choices: dict | None, precision: int | None) -> str | None:
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


def _yes_no(text: str, choices: dict | None, precision: int | None) -> str | None:
    yorn = _vlmeval_matchers()[1]
    for part in (answer_segment(text), text):
        if part:
            verdict = yorn(part)
            if verdict != "Unknown":
                return verdict
    return None


def _free_form(text: str, choices: dict | None, precision: int | None) -> str | None:
    segment = answer_segment(text)
    return normalize_answer(segment, precision) if segment else None


_EXTRACTORS: dict[str, Callable[[str, dict | None, int | None], str | None]] = {
    "MCQ": _options,
    "Y/N": _yes_no,
    "free": _free_form,
}


def _kind(dataset_type: str, choices: dict | None) -> str:
    if choices:
        return "MCQ"
    return next((f for f in ("MCQ", "Y/N") if f in dataset_type.upper()), "free")


def extract_answer(
    text: str | None, dataset_type: str, choices: dict | None = None, precision: int | None = None
) -> str | None:
    """The vote key of a response's final answer; None when none can be found. Never raises.

    ``dataset_type`` is VLMEvalKit's ``DATASET_TYPE`` (e.g. "MCQ", "Y/N", "VQA"); ``choices`` maps
    option letters to option texts (any type: a VQA question with options votes by letter);
    ``precision`` is the decimal places numbers are compared at. Applied until the key is stable,
    so ``extract_answer(key) == key`` for every key it returns.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    extract = _EXTRACTORS[_kind(str(dataset_type), choices)]
    try:
        key = extract(text, choices, precision)
        for _ in range(_MAX_PASSES):
            again = extract(key, choices, precision) if key else None
            if again == key or again is None:
                break
            key = again
    except Exception as exc:  # a malformed response must abstain, never stop a report
        log.debug("no vote key for %r: %s: %s", text[:80], type(exc).__name__, exc)
        return None
    return key
