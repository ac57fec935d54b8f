"""The one PRM interface every backend implements, and the per-candidate result it returns."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

from vlmeval_prm.constants import STEP_SEPARATOR

#: Scoring modes. "step": every step scored (PRM). "outcome": the whole response as one step (ORM).
MODES = ("step", "outcome")


@dataclass
class StepScores:
    """Scores of one candidate. ``scores`` is None when scoring failed; ``error`` says why.

    ``bounds`` (LMDeploy fallback only) marks steps whose P(+) is a bound, not a value:
    None for an exact score, "upper" or "lower" otherwise. ``transient``: the failure may not happen
    again (connection error, timeout, HTTP 5xx), so a rerun scores the candidate again; a permanent
    one (HTTP 400 context length, placeholder/image mismatch, no steps) stays failed.
    """

    steps: list[str]
    scores: list[float] | None
    error: str | None = None
    bounds: list[str | None] | None = None
    meta: dict = field(default_factory=dict)
    transient: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.scores is not None and len(self.scores) == len(self.steps) > 0

    def to_record(self) -> dict:
        return {
            "steps": self.steps,
            "step_scores": self.scores,
            "error": self.error,
            "bounds": self.bounds,
            "meta": self.meta,
        }


def failed(steps: list[str], error: str, transient: bool = False) -> StepScores:
    return StepScores(steps=list(steps), scores=None, error=error, transient=transient)


def prepare(candidates: Sequence[Sequence[str]], mode: str) -> tuple[list[list[str]], list[StepScores | None]]:
    """What each backend scores: the steps per candidate (``outcome`` mode: the whole response as one
    step) and the results known before any model call (a candidate without steps has failed)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    steps_list = [list(c) if mode == "step" else ([STEP_SEPARATOR.join(c)] if c else []) for c in candidates]
    return steps_list, [failed(s, "candidate has no steps") if not s else None for s in steps_list]


class PRMScorer(abc.ABC):
    """score(question, images, candidates) -> per-step P(+) for every candidate.

    ``question`` is plain text (no image tokens: the backend places the images). ``images`` are
    file paths. ``candidates`` are already split into steps. A backend never raises for one bad
    candidate: it returns a failed ``StepScores`` for it and scores the rest.
    """

    #: A short label for logs and failure messages, e.g. "transformers:/models/VisualPRM-8B". What a
    #: stored score is keyed by is the backend's ``identity_of`` (``prm.scorer_identity``), not this.
    identity: str
    #: Whether the stored identity needs the scorer built (``served_model``: what its servers name).
    identity_from_server: bool = False
    #: Whether several questions may be scored at once (served PRMs), or one at a time (a model in process).
    concurrent: bool = True
    #: Whether the backend scores in a PRM format (``prm.formats``; a critic asks its own prompt).
    uses_format: bool = True

    @abc.abstractmethod
    def score(
        self, question: str, images: Sequence[str], candidates: Sequence[Sequence[str]], mode: str = "step"
    ) -> list[StepScores]: ...

    def close(self) -> None:  # noqa: B027  (optional hook: most backends hold nothing to release)
        """Release connections or memory; default does nothing."""
