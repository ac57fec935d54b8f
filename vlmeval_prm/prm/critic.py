"""An MLLM as a step critic: the prompt that asks for one verdict per step, and the reply parser.

The parser maps a free-form reply to one label per step (1 correct, -1 incorrect) or to None when
the reply cannot be read. It never guesses:

- A verdict is read from a ``Step k`` line or a numbered line: ``Step 2: -``,
  ``**Step 2:** Incorrect``, ``- Step 2 - correct``, ``Step 1 - +``, ``Step 2 is wrong``,
  ``Step 2: [✓]``, ``2. +``, or a verdict that ends the line (``Step 2: the sum is wrong.``).
  Markdown (bold, italics, code, headings, quotes, list markers), LaTeX dollars and a ``<think>``
  block are ignored. A step line with a verdict neither at its start nor at its end (for example the
  model restating the step) gives no verdict.
- Without any ``Step k`` verdict, a reply of exactly one bare verdict per line (``+`` / ``-`` /
  ``correct`` ...) for every step, and nothing else, is read in order.
- Unparseable (None): a step without a verdict (a partial reply is not scored on the steps it
  covers, since which steps a critic skips is not random), a step number outside 1..n, or two
  different verdicts for the same step. Repeating the same verdict is fine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CORRECT, INCORRECT = 1, -1

# Longest words first so "incorrect" is not read as "correct" and "not correct" not as "not".
_WORDS = {
    "no errors": CORRECT,
    "no error": CORRECT,
    "no mistakes": CORRECT,
    "no mistake": CORRECT,
    "not correct": INCORRECT,
    "incorrect": INCORRECT,
    "wrong": INCORRECT,
    "false": INCORRECT,
    "invalid": INCORRECT,
    "no": INCORRECT,
    "correct": CORRECT,
    "right": CORRECT,
    "true": CORRECT,
    "valid": CORRECT,
    "yes": CORRECT,
}
_SYMBOLS = {
    "+": CORRECT,
    "✓": CORRECT,
    "✔": CORRECT,
    "✅": CORRECT,
    "-": INCORRECT,
    "−": INCORRECT,
    "✗": INCORRECT,
    "✘": INCORRECT,
    "❌": INCORRECT,
}
_WORD = "|".join(re.escape(w) for w in sorted(_WORDS, key=len, reverse=True))
_SYMBOL = "|".join(re.escape(s) for s in _SYMBOLS)
# A verdict word must end at a word boundary; a symbol must not be the sign of a number ("-5", "-.5").
_VERDICT = re.compile(rf"(?P<word>{_WORD})\b|(?P<sym>{_SYMBOL})(?!\w|\.\d)", re.IGNORECASE)
# "Step 3 ..." or a numbered line "3. ...", "3) ...", "3: ...".
_STEP_LINE = re.compile(r"^(?:step\s*(?P<num>\d+)|(?P<item>\d+)[.):])\s*(?P<rest>.*)$", re.IGNORECASE)
# Between the step number and the verdict: punctuation, brackets, "is", and a dash only when another
# verdict follows it ("Step 2 - correct", "Step 1 - +"); otherwise the dash is the verdict
# ("Step 2: - off by one").
_SEPARATOR = re.compile(
    rf"^(?:[\s:：.,=()\[\]]|[-–—](?=\s*(?:(?:{_WORD})\b|(?:{_SYMBOL})(?!\w|\.\d)))|is\b)*", re.IGNORECASE
)
# A verdict word that ends the line ("... the sum is wrong."), after trailing punctuation. Only words
# that are verdicts in any sentence: a final "no", "true" or "right" may be part of the step itself.
_END_WORDS = ("no errors", "no error", "no mistakes", "no mistake", "incorrect", "wrong", "invalid", "correct", "valid")
_TRAILING = re.compile(rf"\b(?P<word>{'|'.join(map(re.escape, _END_WORDS))})[\s.!)\]]*$", re.IGNORECASE)
_MARKUP = re.compile(r"\*\*|__|[*_`$]")
_LEAD = re.compile(r"^(?:[#>]+\s*|[-*•]\s+|\d+[.)]\s+(?=step))*", re.IGNORECASE)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def build_critic_prompt(question: str, steps: Sequence[str]) -> str:
    """The critic's text prompt (the images go before it). The reference answer is left out, as for PRMs."""
    solution = "\n\n".join(f"Step {i}:\n{step.strip()}" for i, step in enumerate(steps, 1))
    example = "\n".join(f"Step {i}: {'+' if i % 2 else '-'}" for i in range(1, min(len(steps), 2) + 1))
    return (
        "Below are a question about the image(s) and a step-by-step solution to it. "
        "Check every step for errors: misreading the image, wrong facts, wrong calculations or invalid "
        "reasoning.\n\n"
        f"### Question\n{question.strip()}\n\n"
        f"### Solution ({len(steps)} steps)\n{solution}\n\n"
        "### Your task\n"
        f"Give exactly one verdict for each of the {len(steps)} steps, in order, one line per step: "
        "'+' if the step is correct, '-' if it is incorrect. Reply with these lines only, for example:\n"
        f"{example}"
    )


def _clean(line: str) -> str:
    return _LEAD.sub("", _MARKUP.sub("", line).strip()).strip()


def _verdict(text: str) -> int | None:
    """The verdict at the very start of ``text``, if any."""
    m = _VERDICT.match(text)
    if not m:
        return None
    return _WORDS[m["word"].lower()] if m["word"] else _SYMBOLS[m["sym"]]


def _negated(text: str, at: int) -> bool:
    """Whether the word at ``at`` is preceded by "not" ("... is not wrong"): too subtle to read."""
    return bool(re.search(r"\bnot\s*$", text[:at], re.IGNORECASE))


def parse_verdicts(reply: str | None, n_steps: int) -> list[int] | None:
    """One label per step (1 correct, -1 incorrect), or None when the reply cannot be read fully."""
    if not reply or n_steps < 1:
        return None
    lines = [_clean(line) for line in _THINK.sub("", str(reply)).splitlines()]
    found: dict[int, int] = {}
    for line in lines:
        m = _STEP_LINE.match(line)
        if not m:
            continue
        rest = m["rest"]
        label = _verdict(_SEPARATOR.sub("", rest).lstrip())
        if label is None and (end := _TRAILING.search(rest)) and not _negated(rest, end.start()):
            label = _WORDS[end["word"].lower()]
        if label is None:
            continue
        num = int(m["num"] or m["item"])
        if not 1 <= num <= n_steps or found.setdefault(num, label) != label:
            return None
    if found:
        return [found[i] for i in range(1, n_steps + 1)] if len(found) == n_steps else None
    bare = [line for line in lines if line]
    labels = [_verdict(line) if _VERDICT.fullmatch(line.rstrip(".")) else None for line in bare]
    if len(labels) == n_steps and None not in labels:
        return labels
    return None
