"""The VisualPRM scoring conversation: question + first step, then one user turn per step,
each answered by the single assistant token "+" whose probability is the step score."""

from __future__ import annotations

from dataclasses import dataclass

# Our own wording; a served PRM may carry its own system message, so this is configurable.
DEFAULT_SYSTEM_PROMPT = (
    "You are a process reward model for visual reasoning. You receive an image, a question and a "
    "solution one step at a time. After each step, answer '+' if the solution so far is correct "
    "and '-' if it contains an error."
)


@dataclass
class PRMFormat:
    """How candidates are presented to the PRM. ``system_prompt=None`` sends no system turn."""

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    good_token: str = "+"
    bad_token: str = "-"


def first_user_text(question: str, first_step: str) -> str:
    return f"### Question:\n{question}\n\n### Solution Process:\n{first_step}"


def build_messages(question: str, steps: list[str], n_images: int, fmt: PRMFormat) -> list[dict]:
    """HF chat messages for one candidate: images lead the first user turn, every assistant turn is "+".

    The number of assistant turns equals ``len(steps)``: one placeholder per scored step.
    """
    if not steps:
        raise ValueError("a candidate with no steps cannot be scored")
    messages: list[dict] = []
    if fmt.system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": fmt.system_prompt}]})
    first = [{"type": "image"} for _ in range(n_images)]
    first.append({"type": "text", "text": first_user_text(question, steps[0])})
    for i, step in enumerate(steps):
        content = first if i == 0 else [{"type": "text", "text": step}]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": fmt.good_token}]})
    return messages
