"""Best-of-N selection strategies: ONE rule, shared by the run (``BestOfN``) and the report (``bon_at_k``).

Every strategy maps one sample's candidates to the probability of picking each of them
(``Strategy.probabilities``, exact fractions). The run draws its answer from those probabilities
(``pick``, seeded by the sample key, so a resumed run picks the same); the report's BoN@k is the
expected correctness under the same probabilities, averaged over k-subsets, so whatever the run
picks is a candidate the report counts with positive probability.

- argmax strategies (``prm_*``, ``orm``) pick the candidate with the highest value; candidates tied
  at the top share the pick equally.
- vote strategies (``self_consistency``, ``prm_weighted_vote``) total each answer's vote weights
  with ``math.fsum`` (correctly rounded, so the total does not depend on candidate order and equal
  weights give equal totals); the answers tied at the highest total share the pick equally, and
  within an answer its supporters do. Answers are the vote keys of ``answers.extract_answer``, the
  one normaliser: equal answers written two ways get one key.
- ``random`` draws one candidate uniformly; ``oracle`` (Pass@k) picks uniformly among the correct
  ones (needs known correctness; uniform over all when none is correct).

A candidate a strategy cannot use abstains: no usable step scores (failed, empty, NaN or inf:
``aggregate.usable``) for ``prm_*`` and ``prm_weighted_vote``, no outcome score for ``orm``, no
parseable answer for votes. It gets probability 0 whenever any candidate can be used. When none can,
every probability is 0: no answer, which counts as wrong.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial

from vlmeval_prm.select.aggregate import AGGREGATORS, response_score

ARGMAX, VOTE, RANDOM, ORACLE = "argmax", "vote", "random", "oracle"

#: Why a candidate is left out. "correct_unknown" drops it from every strategy (its outcome cannot
#: be judged); the others make it abstain from the one strategy that needs what it lacks.
REASONS = ("correct_unknown", "no_step_scores", "no_outcome_score", "no_answer")


@dataclass
class Candidate:
    text: str | None
    answer: str | None  # vote key from answers.extract_answer (None: unparseable)
    correct: bool | None  # judged by the dataset's evaluate(); None: unknown (the run never knows it)
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

    def probabilities(self, cands: Sequence[Candidate]) -> list[Fraction]:
        """P(this strategy picks candidate i) when exactly ``cands`` were sampled; all 0: no answer."""
        return _PROBABILITIES[self.kind](self, cands)


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


# -- the rule: P(pick candidate i) on one fixed set of candidates -------------------------------
def _uniform(n: int, among: Sequence[int]) -> list[Fraction]:
    share = Fraction(1, len(among)) if among else Fraction(0)
    chosen = set(among)
    return [share if i in chosen else Fraction(0) for i in range(n)]


def _argmax_probabilities(s: Strategy, cands: Sequence[Candidate]) -> list[Fraction]:
    values = [s.value(c) for c in cands]
    best = max((v for v in values if v is not None), default=None)
    return _uniform(len(cands), [i for i, v in enumerate(values) if v is not None and v == best])


def vote_totals(s: Strategy, cands: Sequence[Candidate]) -> dict[str, float]:
    """Each answer's total vote weight: ``math.fsum``, so candidate order cannot change a tie."""
    weights: dict[str, list[float]] = {}
    for c in cands:
        if (w := s.value(c)) is not None:
            weights.setdefault(c.answer, []).append(w)
    return {answer: math.fsum(ws) for answer, ws in weights.items()}


def _vote_probabilities(s: Strategy, cands: Sequence[Candidate]) -> list[Fraction]:
    totals = vote_totals(s, cands)
    out = [Fraction(0)] * len(cands)
    if not totals:
        return out
    best = max(totals.values())
    winners = {a for a, t in totals.items() if t == best}
    supporters = {a: [i for i, c in enumerate(cands) if c.answer == a and s.value(c) is not None] for a in winners}
    for members in supporters.values():
        for i in members:
            out[i] = Fraction(1, len(winners) * len(members))
    return out


def _random_probabilities(s: Strategy, cands: Sequence[Candidate]) -> list[Fraction]:
    return _uniform(len(cands), range(len(cands)))


def _oracle_probabilities(s: Strategy, cands: Sequence[Candidate]) -> list[Fraction]:
    if any(c.correct is None for c in cands):
        raise ValueError("oracle needs the correctness of every candidate")
    right = [i for i, c in enumerate(cands) if c.correct]
    return _uniform(len(cands), right or range(len(cands)))


_PROBABILITIES = {
    ARGMAX: _argmax_probabilities,
    VOTE: _vote_probabilities,
    RANDOM: _random_probabilities,
    ORACLE: _oracle_probabilities,
}


def pick_probabilities(name: str | Strategy, cands: Sequence[Candidate]) -> list[Fraction]:
    """``get_strategy(name).probabilities(cands)``."""
    return get_strategy(name).probabilities(cands)


def pick_seed(name: str, key: str) -> int:
    """The seed of the run's draw for one sample: a function of the strategy and the sample key only."""
    return int.from_bytes(hashlib.sha256(f"pick\0{name}\0{key}".encode()).digest()[:8], "little")


def pick(name: str | Strategy, cands: Sequence[Candidate], key: str) -> int | None:
    """The run's choice: one candidate drawn from the strategy's probabilities with a generator
    seeded by ``key`` (exact: an integer draw over the common denominator); None: no answer."""
    s = get_strategy(name)
    probs = s.probabilities(cands)
    if not any(probs):
        return None
    denominator = math.lcm(*(p.denominator for p in probs))
    ticket = random.Random(pick_seed(s.name, key)).randrange(denominator)
    for i, p in enumerate(probs):
        ticket -= p.numerator * (denominator // p.denominator)
        if ticket < 0:
            return i
    raise AssertionError("probabilities do not sum to 1")  # unreachable: they are exact fractions


def subset_outcome(name: str | Strategy, cands: Sequence[Candidate]) -> float:
    """Expected correctness (0..1) of the strategy's answer when exactly ``cands`` were sampled."""
    if not cands:
        raise ValueError("a subset needs at least one candidate")
    if any(c.correct is None for c in cands):
        raise ValueError("every candidate in a subset needs a known correctness")
    probs = get_strategy(name).probabilities(cands)
    return float(sum(p for p, c in zip(probs, cands) if c.correct))
