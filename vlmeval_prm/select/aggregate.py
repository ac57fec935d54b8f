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


def response_score(step_scores: Sequence[float] | None, how: str = "mean") -> float | None:
    """None when there is nothing to aggregate (a failed or empty score), never a default value."""
    if how not in AGGREGATORS:
        raise KeyError(f"unknown aggregation {how!r}; choose from {sorted(AGGREGATORS)}")
    if not step_scores:
        return None
    return float(AGGREGATORS[how](step_scores))
