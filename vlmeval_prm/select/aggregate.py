"""Step scores -> one response score. A registry, so selection strategies name what they use."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

AGGREGATORS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": lambda s: sum(s) / len(s),  # the paper's choice for Best-of-N
    "min": min,
    "last": lambda s: s[-1],
    "product": math.prod,
}


def usable(step_scores: Sequence[float] | None) -> bool:
    """The one test of "this candidate is scored": at least one step score, every one finite.

    A NaN or inf anywhere makes the whole candidate unscored for every aggregation alike (``min``
    would skip a NaN or return it depending on where it sits; ``last`` would see it only at the end).
    """
    return bool(step_scores) and all(isinstance(s, (int, float)) and math.isfinite(s) for s in step_scores)


def response_score(step_scores: Sequence[float] | None, how: str = "mean") -> float | None:
    """None when the step scores are not ``usable`` (failed, empty or non-finite), never a default value."""
    if how not in AGGREGATORS:
        raise KeyError(f"unknown aggregation {how!r}; choose from {sorted(AGGREGATORS)}")
    if not usable(step_scores):
        return None
    return float(AGGREGATORS[how](step_scores))
