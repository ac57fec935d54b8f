"""BoN@k of a benchmark's own metrics (``benchmarks.Metric``), from each row's expected correctness.

Per row r and k, p_r(k) is the expected correctness of a strategy's pick when k of the row's
candidates are drawn (``bon_at_k.sample_curve``: exact, or Monte Carlo for vote strategies with too
many subsets). Rows are drawn independently, so for a metric that averages a multilinear function g
over groups of rows (a product: "all rotations / all variants right"; WeMath's penalty patterns),
E[metric] = offset + slope * mean over groups of g(p of the members): exact whenever every p_r is.

Where some p_r is a Monte Carlo estimate from D draws, the result is labelled an estimate and carries
a standard error by the delta method: dg/dp_r = g(p | p_r = 1) - g(p | p_r = 0) (g is multilinear)
and Var(p_r estimate) <= p_r (1 - p_r) / D (each draw's outcome lies in [0, 1]), so the error is an
upper bound to first order.

Pass@1 is the first stored candidate of every row alone (0/1 per row): the numbers VLMEvalKit
reports when it evaluates the run's first sample. A group with a row that has no candidate of known
correctness is left out and counted (``dropped_groups``); the mean is over the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlmeval_prm.report.benchmarks import Metric
from vlmeval_prm.select.bon_at_k import MonteCarlo, sample_curve
from vlmeval_prm.select.strategies import SampleCandidates

#: The row of the paper's table that is no strategy: each question's first candidate alone.
PASS_AT_1 = "pass@1"


@dataclass
class Estimate:
    value: float  # 0..1; NaN when no group can be scored
    se: float  # Monte Carlo standard error (upper bound, first order); 0.0 when exact
    monte_carlo: bool
    groups: int  # groups in the value
    dropped_groups: int  # groups with a row without any candidate of known correctness


def row_curves(
    samples: Sequence[SampleCandidates], strategy: str, ks: Sequence[int], mc: MonteCarlo | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(p, draws), both rows x ks: a row's expected correctness at each k (NaN: no candidate with
    known correctness; k above a row's pool size is scored at the pool size, as ``bon_curve`` does)
    and the Monte Carlo draws behind it (0: exact)."""
    p = np.full((len(samples), len(ks)), np.nan)
    draws = np.zeros((len(samples), len(ks)), dtype=int)
    for r, sample in enumerate(samples):
        pool = [c for c in sample.candidates if c.correct is not None]
        if not pool:
            continue
        curve = sample_curve(strategy, pool, [min(k, len(pool)) for k in ks], mc, sample.key)
        p[r] = [v for v, _ in curve]
        draws[r] = [d for _, d in curve]
    return p, draws


def first_candidate(samples: Sequence[SampleCandidates]) -> np.ndarray:
    """Pass@1 per row: the first stored candidate's correctness (NaN: absent or unknown)."""
    return np.array(
        [
            float(s.candidates[0].correct) if s.candidates and s.candidates[0].correct is not None else np.nan
            for s in samples
        ]
    )


def estimate(metric: Metric, p: np.ndarray, draws: np.ndarray | None = None) -> Estimate:
    """The metric's expected value given each row's expected correctness ``p`` (one k)."""
    values, variance, dropped, mc = [], 0.0, 0, False
    for group in metric.groups:
        members = p[list(group)]
        if np.isnan(members).any():
            dropped += 1
            continue
        values.append(metric.value_of(members))
        for j, r in enumerate(group):
            d = int(draws[r]) if draws is not None else 0
            if d <= 0:
                continue
            mc = True
            hi, lo = members.copy(), members.copy()
            hi[j], lo[j] = 1.0, 0.0
            slope = metric.value_of(hi) - metric.value_of(lo)
            variance += slope * slope * members[j] * (1 - members[j]) / d
    if not values:
        return Estimate(float("nan"), 0.0, mc, 0, dropped)
    n = len(values)
    value = metric.offset + metric.slope * math.fsum(values) / n
    return Estimate(value, abs(metric.slope) * math.sqrt(variance) / n, mc, n, dropped)


def metric_curve(metric: Metric, p: np.ndarray, draws: np.ndarray) -> list[Estimate]:
    """``estimate`` at every k (columns of ``p`` and ``draws``)."""
    return [estimate(metric, p[:, j], draws[:, j]) for j in range(p.shape[1])]
