"""BoN@k of metrics that are not a mean of per-row correctness (all variants right, WeMath's strict
score), against brute force over every combination of k-subsets; Monte Carlo labelling; the paper
table's layout. Synthetic candidates: no VLMEvalKit evaluation is needed here, except WeMath's own
category rules, which the strict score is built from."""

import io
import itertools
import random
from math import prod

import numpy as np
import pandas as pd
import pytest

from vlmeval_prm.report.benchmarks import BENCHMARKS, PAPER_ORDER, WEMATH_TOTAL, Metric
from vlmeval_prm.report.bon_metrics import PASS_AT_1, estimate, first_candidate, metric_curve, row_curves
from vlmeval_prm.report.paper_table import dataset_curves, paper_table, print_paper, scaling, write_paper
from vlmeval_prm.select.bon_at_k import MonteCarlo, bon_curve
from vlmeval_prm.select.strategies import Candidate, SampleCandidates, subset_outcome

STRATEGIES = ["prm_mean", "prm_min", "self_consistency", "prm_weighted_vote", "random", "oracle"]


def synthetic(rows, n, seed):
    """Candidates with distinct PRM scores, a few answers, correctness tied to the answer."""
    rng = random.Random(seed)
    samples = []
    for r in range(rows):
        right = rng.choice("abc")
        cands = []
        for _ in range(n):
            answer = rng.choice("abc")
            cands.append(
                Candidate(
                    text=answer,
                    answer=answer,
                    correct=answer == right,
                    step_scores=[rng.random() for _ in range(rng.randint(1, 3))],
                )
            )
        samples.append(SampleCandidates(key=f"q{r}", candidates=cands))
    return samples


def row_outcomes(strategy, sample, k):
    return [subset_outcome(strategy, list(s)) for s in itertools.combinations(sample.candidates, k)]


def test_mean_metric_equals_bon_curve():
    samples = synthetic(7, 5, 0)
    metric = Metric("accuracy", tuple((r,) for r in range(7)))
    for strategy in STRATEGIES:
        p, draws = row_curves(samples, strategy, [1, 2, 3, 5])
        got = [e.value for e in metric_curve(metric, p, draws)]
        assert got == pytest.approx([r.accuracy for r in bon_curve(samples, strategy, [1, 2, 3, 5])])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_all_right_groups_match_brute_force(strategy):
    """DynaMath's worst case / circular MCQ: a group counts only if every member row is right."""
    samples = synthetic(6, 4, 1)
    metric = Metric("worst_case", ((0, 1, 2), (3, 4), (5,)))
    for k in (1, 2, 3, 4):
        p, draws = row_curves(samples, strategy, [k])
        brute = np.mean(
            [
                np.mean(
                    [
                        prod(combo)
                        for combo in itertools.product(*(row_outcomes(strategy, samples[r], k) for r in group))
                    ]
                )
                for group in metric.groups
            ]
        )
        est = estimate(metric, p[:, 0], draws[:, 0])
        assert est.value == pytest.approx(brute) and est.se == 0 and not est.monte_carlo


def wemath_score(bits, groups, mode):
    """WeMath's definition, written out: per multi-step problem, InadequateGeneralization (all steps
    right, whole wrong) costs 0.5; InsufficientKnowledge (some step wrong, whole wrong) and
    RoteMemorization (strict: some step wrong, whole right; loose: all steps wrong, whole right) 1."""
    penalty = 0.0
    for group in groups:
        *parts, whole = [bits[r] for r in group]
        if all(parts) and not whole:
            penalty += 0.5
        elif not all(parts) and not whole:
            penalty += 1
        elif whole and (not all(parts) if mode == "strict" else not any(parts)):
            penalty += 1
    return (WEMATH_TOTAL - penalty) / WEMATH_TOTAL


def wemath_metrics():
    rows, index = [], 0
    for pid, steps in ((1, 2), (2, 3), (3, 2)):
        for part in [*map(str, range(1, steps + 1)), "multi"]:
            index += 1
            rows.append({"index": index, "ID": pid, "key": f"{steps}steps_{part}"})
    bench = next(b for b in BENCHMARKS if b.name == "WeMath")
    return bench.metrics(pd.DataFrame(rows))


@pytest.mark.parametrize("strategy", ["prm_mean", "self_consistency", "oracle"])
def test_wemath_scores_match_brute_force(strategy):
    strict, loose = wemath_metrics()
    groups = strict.groups
    assert sorted(len(g) for g in groups) == [3, 3, 4]
    samples = synthetic(10, 3, 2)
    k = 2
    p, draws = row_curves(samples, strategy, [k])
    for metric, mode in ((strict, "strict"), (loose, "loose")):
        # the score is 1 - (sum of per-problem penalties) / 525, and expectation is linear: brute force
        # each problem over every combination of one k-subset per row, splitting a tie's fractional
        # outcome into its right/wrong weights
        penalty = 0.0
        for group in groups:
            outcomes = [row_outcomes(strategy, samples[r], k) for r in group]
            combos = list(itertools.product(*outcomes))
            for combo in combos:
                for bits in itertools.product((0, 1), repeat=len(group)):
                    w = prod(o if b else 1 - o for b, o in zip(bits, combo))
                    local = dict(zip(range(len(group)), bits))
                    score = wemath_score([local[j] for j in range(len(group))], [tuple(range(len(group)))], mode)
                    penalty += w * (1 - score) * WEMATH_TOTAL / len(combos)
        assert estimate(metric, p[:, 0], draws[:, 0]).value == pytest.approx(1 - penalty / WEMATH_TOTAL), mode


def test_vote_strategies_beyond_the_enumeration_limit_are_labelled_estimates():
    samples = synthetic(8, 12, 3)
    metric = Metric("worst_case", ((0, 1), (2, 3), (4, 5), (6, 7)))
    mc = MonteCarlo(exact_limit=10, draws=4000, seed=1)
    p, draws = row_curves(samples, "self_consistency", [6], mc)
    assert (draws > 0).all()
    est = estimate(metric, p[:, 0], draws[:, 0])
    assert est.monte_carlo and est.se > 0
    exact_p, _ = row_curves(samples, "self_consistency", [6])
    exact = estimate(metric, exact_p[:, 0])
    assert not exact.monte_carlo and abs(est.value - exact.value) < 4 * est.se + 1e-9


def test_unknown_rows_drop_their_group():
    samples = synthetic(4, 3, 4)
    for c in samples[1].candidates:
        c.correct = None
    metric = Metric("worst_case", ((0, 1), (2, 3)))
    p, draws = row_curves(samples, "prm_mean", [2])
    est = estimate(metric, p[:, 0], draws[:, 0])
    assert est.dropped_groups == 1 and est.groups == 1
    assert est.value == pytest.approx(p[2, 0] * p[3, 0])
    assert np.isnan(first_candidate(samples)[1])


def curves_for(name, family, seed, headline="accuracy"):
    samples = synthetic(5, 4, seed)
    table = pd.DataFrame({"index": range(5)})
    bench = next((b for b in BENCHMARKS if b.name == family), None)
    curves = dataset_curves(name, samples, table, [1, 2, 4], ["prm_mean", "random"], None, None)
    curves.benchmark = bench.name if bench else None
    return curves


def test_paper_table_layout_seven_benchmarks(tmp_path):
    names = {
        "MMMU": "MMMU_DEV_VAL",
        "MathVista": "MathVista_MINI",
        "MathVision": "MathVision",
        "MathVerse": "MathVerse_MINI_Vision_Only",
        "DynaMath": "DynaMath",
        "WeMath": "WeMath",
        "LogicVista": "LogicVista",
    }
    curves = [curves_for(names[f], f, i) for i, f in enumerate(reversed(PAPER_ORDER))]
    table = paper_table(curves)
    assert list(table.columns) == ["N", "strategy", *[names[f] for f in PAPER_ORDER], "Overall", "Overall MC s.e."]
    assert list(table["strategy"][:3]) == [PASS_AT_1, "prm_mean", "random"]
    assert np.allclose(table["Overall"], table[[names[f] for f in PAPER_ORDER]].mean(axis=1))
    # Pass@1 is the first candidate at every N; random does not depend on N
    scale = scaling(table)
    assert scale.loc[PASS_AT_1].nunique() == 1 and np.allclose(scale.loc["random"], scale.loc["random"].iloc[0])
    paths = write_paper(curves, str(tmp_path / "M_bon_paper"))
    sheets = pd.read_excel(paths["xlsx"], sheet_name=None)
    assert {"N=1", "N=2", "N=4", "scaling", "metrics"} <= set(sheets)
    assert list(sheets["N=4"].columns)[:2] == ["strategy", "MMMU_DEV_VAL"]


def test_fewer_than_seven_is_not_called_overall():
    table = paper_table([curves_for("MathVista_MINI", "MathVista", 0), curves_for("Custom", None, 1)])
    assert "Mean of 2" in table.columns and "Overall" not in table.columns


def test_one_dataset_prints_its_column_once():
    """The CSV keeps its columns; the printout does not repeat the dataset as a "Mean of 1"."""
    curves = [curves_for("Custom", None, 1)]
    table = paper_table(curves)
    assert list(table.columns) == ["N", "strategy", "Custom", "Mean of 1", "Mean of 1 MC s.e."]
    buf = io.StringIO()
    print_paper(curves, file=buf)
    text = buf.getvalue()
    assert "Mean of 1" not in text and "MC s.e." in text and "Custom (%) by N" in text
    assert f"{table[table['N'] == 4].set_index('strategy').loc['random', 'Custom']:.1f}" in text
