"""BoN@k for every k <= N from one run at N: the expected accuracy when k of a question's N
candidates are drawn uniformly without replacement and a strategy picks among them.

Estimators (per question, pool of n candidates):
- argmax: exact, by order statistics. Group the usable candidates by equal value, best first; with
  ``a`` candidates strictly better than a group of size ``m``, the group holds the subset's maximum
  with probability (C(n-a, k) - C(n-a-m, k)) / C(n, k) (the sum over its ranks j of
  C(n-j, k-1) / C(n, k)), and a tie inside the subset is broken uniformly, so every member of the
  group wins equally often: the group contributes that probability times its mean correctness.
  Abstaining candidates only ever "win" an all-abstaining subset, which scores 0.
- oracle: exact, 1 - C(wrong, k) / C(n, k). random: exact, mean correctness (any k).
- vote: exact enumeration of all k-subsets while C(n, k) <= ``exact_limit``, else ``draws`` uniform
  k-subsets from a generator seeded by (seed, strategy, question key, k), so reruns agree. Each
  subset is scored by ``strategies``' vote rule (answers tied at the top share the pick equally,
  totals by ``math.fsum``), vectorised in ``_Ballots.outcomes``.

Pools and counting: candidates with unknown correctness are dropped (reason "correct_unknown"); a
question left with none is dropped from the denominator. A question with n < k is scored at k = n
and counted as capped. A question where the strategy can use no candidate stays in and scores 0.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from math import comb, fsum

import numpy as np

from vlmeval_prm.select.strategies import (
    ARGMAX,
    ORACLE,
    RANDOM,
    REASONS,
    VOTE,
    Candidate,
    SampleCandidates,
    Strategy,
    get_strategy,
    subset_outcome,
)

DEFAULT_EXACT_LIMIT = 20_000
DEFAULT_DRAWS = 2_000


@dataclass
class MonteCarlo:
    exact_limit: int = DEFAULT_EXACT_LIMIT
    draws: int = DEFAULT_DRAWS
    seed: int = 0


@dataclass
class BoNResult:
    strategy: str
    k: int
    accuracy: float  # 0..1 over ``samples`` questions; NaN when there are none
    samples: int  # questions in the denominator
    excluded: dict[str, int] = field(default_factory=dict)  # candidates left out, per reason
    dropped_samples: int = 0  # no candidate with known correctness: not in the denominator
    empty_samples: int = 0  # strategy can use none of the candidates: scored 0
    capped_samples: int = 0  # fewer than k candidates: scored at k = n
    monte_carlo_samples: int = 0  # questions estimated by Monte Carlo rather than exactly
    monte_carlo_draws: int = 0  # draws for each of them


def excluded_reasons(s: Strategy, cands: Sequence[Candidate]) -> Counter:
    """Every left-out candidate, counted once under its first reason."""
    out: Counter = Counter()
    for c in cands:
        reason = "correct_unknown" if c.correct is None else s.abstain_reason(c)
        if reason is not None:
            out[reason] += 1
    return out


def _argmax_at_k(
    s: Strategy, pool: Sequence[Candidate], ks: Sequence[int], mc: MonteCarlo, key: str
) -> list[tuple[float, int]]:
    n = len(pool)
    groups: dict[float, list[bool]] = {}
    for c in pool:
        if (v := s.value(c)) is not None:
            groups.setdefault(v, []).append(c.correct)
    ranked = [(len(g), sum(g)) for _, g in sorted(groups.items(), reverse=True)]
    out = []
    for k in ks:
        terms, better = [], 0
        for size, right in ranked:
            holds_max = comb(n - better, k) - comb(n - better - size, k)
            terms.append(holds_max * right / (size * comb(n, k)))  # exact ints, one rounding
            better += size
        out.append((fsum(terms), 0))
    return out


def _oracle_at_k(
    s: Strategy, pool: Sequence[Candidate], ks: Sequence[int], mc: MonteCarlo, key: str
) -> list[tuple[float, int]]:
    n, wrong = len(pool), sum(not c.correct for c in pool)
    return [(1 - comb(wrong, k) / comb(n, k), 0) for k in ks]


def _random_at_k(
    s: Strategy, pool: Sequence[Candidate], ks: Sequence[int], mc: MonteCarlo, key: str
) -> list[tuple[float, int]]:
    return [(sum(c.correct for c in pool) / len(pool), 0) for _ in ks]


#: Relative slack between numpy's running sums and ``math.fsum``: a sum of k terms is off by at most
#: k units in the last place of the sum of their magnitudes; this is 8x that, per term.
_SUM_SLACK = 2.0**-50


@dataclass
class _Ballots:
    """A pool as arrays: answer ids, vote weights (0 when abstaining), usable, correct."""

    strategy: Strategy
    pool: Sequence[Candidate]
    answer: np.ndarray
    weight: np.ndarray
    usable: np.ndarray
    correct: np.ndarray
    answers: int
    exact_sums: bool  # integer weights: numpy's float totals are exact, as fsum's are

    @classmethod
    def of(cls, s: Strategy, pool: Sequence[Candidate]) -> _Ballots:
        values = [s.value(c) for c in pool]
        ids: dict[str, int] = {}
        answer = [ids.setdefault(c.answer, len(ids)) if v is not None else 0 for c, v in zip(pool, values)]
        weight = np.array([v or 0.0 for v in values], dtype=float)
        exact = bool(np.all(weight == np.round(weight)) and np.abs(weight).sum() < 2.0**52)
        return cls(
            s,
            pool,
            np.array(answer),
            weight,
            np.array([v is not None for v in values]),
            np.array([bool(c.correct) for c in pool], dtype=float),
            max(len(ids), 1),
            exact,
        )

    def outcomes(self, subsets: np.ndarray) -> np.ndarray:
        """``strategies``' vote rule on many subsets at once (rows of pool indices): the mean, over the
        answers tied at the top, of the share of that answer's supporters who are correct.

        numpy's totals can differ from ``math.fsum``'s in the last bits, so a row where another answer
        comes within rounding of the top is scored by ``subset_outcome`` itself: both agree exactly.
        """
        rows, k = subsets.shape
        width, size = self.answers, rows * self.answers
        use = self.usable[subsets]
        bins = (np.arange(rows)[:, None] * width + self.answer[subsets])[use]

        def per_answer(weights=None) -> np.ndarray:
            return np.bincount(bins, weights=weights, minlength=size).reshape(rows, width)

        totals, count = per_answer(self.weight[subsets][use]), per_answer()
        right = per_answer(self.correct[subsets][use])
        present = count > 0
        best = np.where(present, totals, -np.inf).max(axis=1, keepdims=True)
        if self.exact_sums:
            top, unsure = present & (totals == best), np.zeros(rows, dtype=bool)
        else:
            margin = _SUM_SLACK * (k + 1) * per_answer(np.abs(self.weight[subsets][use])).sum(axis=1, keepdims=True)
            top = present & (totals >= best - margin)
            unsure = top.sum(axis=1) > 1
        share = np.where(top, right / np.maximum(count, 1), 0.0).sum(axis=1) / np.maximum(top.sum(axis=1), 1)
        out = np.where(present.any(axis=1), share, 0.0)
        for r in np.flatnonzero(unsure):
            out[r] = subset_outcome(self.strategy, [self.pool[i] for i in subsets[r]])
        return out


def _subset_seed(mc: MonteCarlo, name: str, key: str, k: int) -> int:
    digest = hashlib.sha256(f"{mc.seed}\0{name}\0{key}\0{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _vote_at_k(
    s: Strategy, pool: Sequence[Candidate], ks: Sequence[int], mc: MonteCarlo, key: str
) -> list[tuple[float, int]]:
    n, ballots, out = len(pool), _Ballots.of(s, pool), []
    for k in ks:
        if comb(n, k) <= mc.exact_limit:
            subsets = np.array(list(combinations(range(n), k)), dtype=np.intp).reshape(-1, k)
            out.append((float(ballots.outcomes(subsets).mean()), 0))
        else:
            rng = np.random.default_rng(_subset_seed(mc, s.name, key, k))
            subsets = np.sort(np.argpartition(rng.random((mc.draws, n)), k - 1, axis=1)[:, :k], axis=1)
            out.append((float(ballots.outcomes(subsets).mean()), mc.draws))
    return out


_ESTIMATORS = {ARGMAX: _argmax_at_k, VOTE: _vote_at_k, RANDOM: _random_at_k, ORACLE: _oracle_at_k}


def sample_curve(
    name: str | Strategy, pool: Sequence[Candidate], ks: Sequence[int], mc: MonteCarlo | None = None, key: str = ""
) -> list[tuple[float, int]]:
    """Per k: (expected correctness of one question, Monte Carlo draws used or 0 when exact).

    ``pool`` must all have known correctness; every k must be in 1..len(pool). ``key`` seeds the
    Monte Carlo draws.
    """
    if not all(1 <= k <= len(pool) for k in ks):
        raise ValueError(f"every k must be in 1..{len(pool)}, got {list(ks)}")
    s = get_strategy(name)
    return _ESTIMATORS[s.kind](s, pool, ks, mc or MonteCarlo(), key)


def sample_at_k(
    name: str | Strategy, pool: Sequence[Candidate], k: int, mc: MonteCarlo | None = None, key: str = ""
) -> tuple[float, int]:
    """``sample_curve`` at one k."""
    return sample_curve(name, pool, [k], mc, key)[0]


def bon_curve(
    samples: Sequence[SampleCandidates], name: str | Strategy, ks: Sequence[int], mc: MonteCarlo | None = None
) -> list[BoNResult]:
    """Accuracy of one strategy at each k over all questions, with what was left out and why."""
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    s = get_strategy(name)
    results = [BoNResult(strategy=s.name, k=k, accuracy=float("nan"), samples=0) for k in ks]
    excluded: Counter = Counter({r: 0 for r in REASONS})
    totals = [0.0] * len(ks)
    for sample in samples:
        excluded.update(excluded_reasons(s, sample.candidates))
        pool = [c for c in sample.candidates if c.correct is not None]
        if not pool:
            for res in results:
                res.dropped_samples += 1
            continue
        empty = all(s.value(c) is None for c in pool)
        curve = sample_curve(s, pool, [min(k, len(pool)) for k in ks], mc, sample.key)
        for i, (res, k, (value, draws)) in enumerate(zip(results, ks, curve)):
            totals[i] += value
            res.samples += 1
            res.capped_samples += len(pool) < k
            res.empty_samples += empty
            if draws:
                res.monte_carlo_samples += 1
                res.monte_carlo_draws = draws
    for res, total in zip(results, totals):
        res.excluded = dict(excluded)
        if res.samples:
            res.accuracy = total / res.samples
    return results


def bon_at_k(
    samples: Sequence[SampleCandidates], name: str | Strategy, k: int, mc: MonteCarlo | None = None
) -> BoNResult:
    """``bon_curve`` at one k."""
    return bon_curve(samples, name, [k], mc)[0]
