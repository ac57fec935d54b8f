"""Best-of-N selection strategies, and what each one scores on one fixed set of candidates.

The per-subset rules here are the definition that ``bon_at_k``'s fast estimators must reproduce:

- argmax strategies (``prm_*``, ``orm``) pick the candidate with the highest value. A tie is broken
  uniformly at random, so the outcome is the mean correctness of the tied candidates.
- vote strategies (``self_consistency``, ``prm_weighted_vote``) sum each answer's vote weights in
  candidate order; the highest total wins, and a tie goes to the answer that occurs first. The
  outcome is the mean correctness of the winner's supporters (they normally agree: equal answers
  are judged alike).
- ``random`` is one candidate drawn uniformly (mean correctness); ``oracle`` is Pass@k (any correct).

A candidate a strategy cannot use (no score, no parseable answer) abstains: it may be drawn but can
never win. A subset where every candidate abstains gives no answer, which counts as wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from vlmeval_prm.select.aggregate import AGGREGATORS, response_score

ARGMAX, VOTE, RANDOM, ORACLE = "argmax", "vote", "random", "oracle"

#: Why a candidate is left out. "correct_unknown" drops it from every strategy (its outcome cannot
#: be judged); the others make it abstain from the one strategy that needs what it lacks.
REASONS = ("correct_unknown", "no_step_scores", "no_outcome_score", "no_answer")


@dataclass
class Candidate:
    text: str | None
    answer: str | None  # extracted, normalised final answer (None: unparseable)
    correct: bool | None  # judged by the dataset's evaluate(); None: unknown
    step_scores: list[float] | None  # PRM step scores; None: failed
    outcome_score: float | None = None  # ORM score; None: absent/failed


@dataclass
class SampleCandidates:
    key: str
    candidates: list[Candidate]


@dataclass(frozen=True)
class Strategy:
    """``score`` is the argmax value or the vote weight; None from it makes the candidate abstain
    for reason ``missing``. Vote strategies also need an answer."""

    name: str
    kind: str
    score: Callable[[Candidate], float | None] | None = None
    missing: str | None = None

    def value(self, c: Candidate) -> float | None:
        """The argmax value or vote weight; None when the candidate abstains."""
        if self.kind == VOTE and c.answer is None:
            return None
        return self.score(c) if self.score is not None else 0.0

    def abstain_reason(self, c: Candidate) -> str | None:
        if self.kind == VOTE and c.answer is None:
            return "no_answer"
        if self.score is not None and self.score(c) is None:
            return self.missing
        return None


STRATEGIES: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    STRATEGIES[strategy.name] = strategy
    return strategy


def _finite(fn: Callable[[Candidate], float | None]) -> Callable[[Candidate], float | None]:
    """NaN or inf would break ordering; treat them as missing."""

    def value(c: Candidate) -> float | None:
        v = fn(c)
        return float(v) if v is not None and math.isfinite(v) else None

    return value


def strategy(name: str, kind: str, missing: str | None = None):
    """Decorator: register ``fn(candidate) -> value or weight`` as a strategy."""

    def deco(fn: Callable[[Candidate], float | None]) -> Callable[[Candidate], float | None]:
        register(Strategy(name, kind, _finite(fn), missing))
        return fn

    return deco


def _prm_value(c: Candidate, how: str) -> float | None:
    return response_score(c.step_scores, how)


for _how in AGGREGATORS:  # prm_mean, prm_min, prm_last, prm_product
    register(Strategy(f"prm_{_how}", ARGMAX, _finite(partial(_prm_value, how=_how)), "no_step_scores"))


@strategy("orm", ARGMAX, missing="no_outcome_score")
def _orm_value(c: Candidate) -> float | None:
    return c.outcome_score


@strategy("self_consistency", VOTE)
def _one_vote(c: Candidate) -> float:
    return 1.0


@strategy("prm_weighted_vote", VOTE, missing="no_step_scores")
def _prm_weight(c: Candidate) -> float | None:
    return response_score(c.step_scores, "mean")


register(Strategy("random", RANDOM))
register(Strategy("oracle", ORACLE))


def get_strategy(name: str | Strategy) -> Strategy:
    if isinstance(name, Strategy):
        return name
    if name not in STRATEGIES:
        raise KeyError(f"unknown strategy {name!r}; choose from {list(STRATEGIES)}")
    return STRATEGIES[name]


# -- outcome on one fixed set of candidates (all with known correctness), in candidate order ----
def _argmax_outcome(s: Strategy, cands: Sequence[Candidate]) -> float:
    valued = [(v, c.correct) for c in cands if (v := s.value(c)) is not None]
    if not valued:
        return 0.0
    best = max(v for v, _ in valued)
    tied = [ok for v, ok in valued if v == best]
    return sum(tied) / len(tied)


def _vote_outcome(s: Strategy, cands: Sequence[Candidate]) -> float:
    totals: dict[str, float] = {}  # insertion order = first occurrence, which breaks ties
    supporters: dict[str, list[bool]] = {}
    for c in cands:
        if (weight := s.value(c)) is not None:
            totals[c.answer] = totals.get(c.answer, 0.0) + weight
            supporters.setdefault(c.answer, []).append(c.correct)
    if not totals:
        return 0.0
    winner = max(totals, key=totals.__getitem__)  # max keeps the first of equal keys
    return sum(supporters[winner]) / len(supporters[winner])


def _random_outcome(s: Strategy, cands: Sequence[Candidate]) -> float:
    return sum(c.correct for c in cands) / len(cands)


def _oracle_outcome(s: Strategy, cands: Sequence[Candidate]) -> float:
    return float(any(c.correct for c in cands))


_OUTCOMES = {ARGMAX: _argmax_outcome, VOTE: _vote_outcome, RANDOM: _random_outcome, ORACLE: _oracle_outcome}


def subset_outcome(name: str | Strategy, cands: Sequence[Candidate]) -> float:
    """Expected correctness (0..1) of the strategy's answer when exactly ``cands`` were sampled."""
    if not cands:
        raise ValueError("a subset needs at least one candidate")
    if any(c.correct is None for c in cands):
        raise ValueError("every candidate in a subset needs a known correctness")
    s = get_strategy(name)
    return _OUTCOMES[s.kind](s, cands)
