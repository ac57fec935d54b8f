"""Split a step-by-step response into the steps a PRM scores (VisualPRM convention)."""

from __future__ import annotations

import math
import re

from vlmeval_prm.constants import MAX_STEPS, STEP_SEPARATOR

_BLANK_LINE = re.compile(r"\n[ \t\u00a0]*\n")


def split_steps(response: str | None, max_steps: int = MAX_STEPS) -> list[str]:
    """Split on blank lines; merge consecutive pieces evenly when there are more than ``max_steps``.

    A response without blank lines is one step (VisualPRM scores it that way too). An empty or
    whitespace-only response has no steps; callers record that as a failure rather than scoring it.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if not response:
        return []
    text = response.replace("\r\n", "\n").replace("\r", "\n")
    pieces = [p.strip() for p in _BLANK_LINE.split(text)]
    pieces = [p for p in pieces if p]
    if len(pieces) <= max_steps:
        return pieces
    group = math.ceil(len(pieces) / max_steps)
    return [STEP_SEPARATOR.join(pieces[i : i + group]) for i in range(0, len(pieces), group)]
