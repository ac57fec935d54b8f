import math
from fractions import Fraction
from itertools import combinations
from math import comb

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmeval_prm.select.bon_at_k import MonteCarlo, bon_at_k, sample_at_k
from vlmeval_prm.select.strategies import STRATEGIES, Candidate, SampleCandidates, get_strategy, subset_outcome

ALL = list(STRATEGIES)

# Step scores and weights come from a few values, so ties are frequent: dyadic ones (exact sums), ones
# whose float sums depend on the order of addition (0.1 + 0.2 + 0.3), and NaN (an unscored candidate).
_finite = [0.0, 0.25, 0.5, 0.75, 1.0, 0.1, 0.2, 0.3]
_score = st.sampled_from([*_finite, math.nan])
_candidate = st.builds(
    lambda correct, scores, answer, outcome: Candidate("t", answer, correct, scores, outcome),
    correct=st.booleans(),
    scores=st.one_of(st.none(), st.lists(_score, min_size=1, max_size=3)),
    answer=st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
    outcome=st.one_of(st.none(), _score),
)


def brute_force(name, pool, k):
    """The definition: the mean outcome over every k-subset."""
    outcomes = [subset_outcome(name, [pool[i] for i in sub]) for sub in combinations(range(len(pool)), k)]
    return sum(Fraction(o) for o in outcomes) / len(outcomes)


def cand(correct, scores=(0.5,), answer="a", outcome=None):
    return Candidate("t", answer, correct, None if scores is None else list(scores), outcome)


@settings(max_examples=150, deadline=None)
@given(pool=st.lists(_candidate, min_size=1, max_size=7), data=st.data())
def test_exact_estimator_equals_enumeration_of_all_subsets(pool, data):
    k = data.draw(st.integers(1, len(pool)))
    for name in ALL:
        assert sample_at_k(name, pool, k) == (pytest.approx(float(brute_force(name, pool, k)), abs=1e-12), 0)


@settings(max_examples=60, deadline=None)
@given(pool=st.lists(_candidate, min_size=1, max_size=8))
def test_oracle_bounds_every_strategy_at_every_k(pool):
    for k in range(1, len(pool) + 1):
        oracle, _ = sample_at_k("oracle", pool, k)
        for name in ALL:
            assert sample_at_k(name, pool, k)[0] <= oracle + 1e-12


@settings(max_examples=60, deadline=None)
@given(correct=st.lists(st.booleans(), min_size=1, max_size=9), data=st.data())
def test_bon_at_1_equals_random_when_every_candidate_is_usable(correct, data):
    score = st.sampled_from(_finite)
    pool = [cand(c, [data.draw(score)], data.draw(st.sampled_from("ab")), data.draw(score)) for c in correct]
    random_acc = sample_at_k("random", pool, 1)[0]
    assert random_acc == pytest.approx(sum(correct) / len(correct))
    for name in ALL:
        assert sample_at_k(name, pool, 1)[0] == pytest.approx(random_acc)


@settings(max_examples=60, deadline=None)
@given(pool=st.lists(_candidate, min_size=1, max_size=9))
def test_bon_at_n_is_the_plain_selection_on_all_candidates(pool):
    for name in ALL:
        assert sample_at_k(name, pool, len(pool))[0] == pytest.approx(subset_outcome(name, pool))


def test_vote_ties_are_shared_in_the_vectorised_estimator():
    # self_consistency: x and y tie 2-2 at k=4; weighted: x and y hold the same weights in another order
    votes = [cand(False, answer="x"), cand(True, answer="y"), cand(True, answer="y"), cand(False, answer="x")]
    assert sample_at_k("self_consistency", votes, 4) == (0.5, 0)
    weighted = [
        cand(True, [0.1], "x"),
        cand(False, [0.3], "y"),
        cand(True, [0.2], "x"),
        cand(False, [0.2], "y"),
        cand(True, [0.3], "x"),
        cand(False, [0.1], "y"),
    ]
    assert sample_at_k("prm_weighted_vote", weighted, 6) == (0.5, 0)
    mc = MonteCarlo(exact_limit=0, draws=50, seed=1)  # the Monte Carlo path goes through the same rule
    assert sample_at_k("prm_weighted_vote", weighted, 6, mc) == (0.5, 50)


def test_hand_computed_argmax_with_a_tie():
    # values 0.9 (wrong), 0.9 (right), 0.5 (right); k=2: {0,1} tie -> 1/2, {0,2} -> 0, {1,2} -> 1
    pool = [cand(False, [0.9]), cand(True, [0.9]), cand(True, [0.5])]
    assert sample_at_k("prm_mean", pool, 2)[0] == pytest.approx(0.5)
    assert sample_at_k("prm_mean", pool, 3)[0] == pytest.approx(0.5)
    assert sample_at_k("prm_mean", pool, 1)[0] == pytest.approx(2 / 3)


def test_order_statistics_without_ties():
    # ranked best first: right, wrong, right, wrong, wrong; P(rank j wins) = C(5-j, k-1) / C(5, k)
    pool = [cand(c, [v]) for c, v in [(False, 0.1), (True, 0.9), (False, 0.7), (True, 0.5), (False, 0.3)]]
    for k in range(1, 6):
        expected = (comb(4, k - 1) + comb(2, k - 1)) / comb(5, k)
        assert sample_at_k("prm_mean", pool, k)[0] == pytest.approx(expected)


def test_oracle_closed_form():
    pool = [cand(c) for c in [True, False, False, False, True, False]]
    for k in range(1, 7):
        assert sample_at_k("oracle", pool, k)[0] == pytest.approx(1 - comb(4, k) / comb(6, k))


def test_failed_score_abstains_but_is_still_drawn():
    pool = [cand(True, None), cand(False, [0.4])]
    assert sample_at_k("prm_mean", pool, 1)[0] == 0.0  # drawn alone: no answer
    pool = [cand(False, None), cand(True, [0.4])]
    assert sample_at_k("prm_mean", pool, 1)[0] == pytest.approx(0.5)
    assert sample_at_k("prm_mean", pool, 2)[0] == 1.0


def test_k_out_of_range_is_an_error():
    with pytest.raises(ValueError):
        sample_at_k("random", [cand(True)], 2)
    with pytest.raises(ValueError):
        bon_at_k([], "random", 0)


def _vote_samples(count, n, seed):
    import random

    rng = random.Random(seed)
    return [
        SampleCandidates(f"q{q}", [cand(rng.random() < 0.4, [rng.random()], rng.choice("abcd")) for _ in range(n)])
        for q in range(count)
    ]


@pytest.mark.parametrize("name", ["self_consistency", "prm_weighted_vote"])
def test_monte_carlo_vote_is_close_to_exact_enumeration(name):
    samples = _vote_samples(count=6, n=12, seed=3)  # C(12, 6) = 924 subsets
    mc = MonteCarlo(exact_limit=100, draws=4000, seed=7)
    for s in samples:
        exact, exact_draws = sample_at_k(name, s.candidates, 6)
        approx, draws = sample_at_k(name, s.candidates, 6, mc, s.key)
        assert (exact_draws, draws) == (0, 4000)
        assert approx == pytest.approx(exact, abs=0.035)  # > 4 standard errors (<= 0.0079)
    res_mc, res_exact = bon_at_k(samples, name, 6, mc), bon_at_k(samples, name, 6)
    assert (res_mc.monte_carlo_samples, res_mc.monte_carlo_draws) == (6, 4000)
    assert (res_exact.monte_carlo_samples, res_exact.monte_carlo_draws) == (0, 0)
    assert res_mc.accuracy == pytest.approx(res_exact.accuracy, abs=0.015)
    assert bon_at_k(samples, name, 6, mc).accuracy == res_mc.accuracy  # seeded: reruns agree
    assert bon_at_k(samples, name, 6, MonteCarlo(100, 4000, seed=8)).accuracy != res_mc.accuracy


def test_exclusions_are_counted_and_nothing_crashes():
    samples = [
        SampleCandidates(
            "full",
            [
                cand(True, [0.9], "a", 0.8),
                cand(False, [0.1], "b", 0.2),
                cand(True, None, None, None),
                cand(None, [0.5], "a", 0.5),
            ],
        ),
        SampleCandidates("short", [cand(False, [0.3], None, 0.3)]),
        SampleCandidates("unjudged", [cand(None), cand(None)]),
        SampleCandidates("no_scores", [cand(True, None, "a"), cand(False, None, "b")]),
        SampleCandidates("empty", []),
    ]
    results = {name: bon_at_k(samples, name, 4) for name in ALL}
    for r in results.values():
        assert (r.samples, r.dropped_samples, r.capped_samples) == (3, 2, 3)
        assert r.excluded["correct_unknown"] == 3
    assert results["prm_mean"].excluded["no_step_scores"] == 3
    assert results["prm_mean"].empty_samples == 1
    assert results["orm"].excluded["no_outcome_score"] == 3
    assert results["self_consistency"].excluded["no_answer"] == 2
    assert results["self_consistency"].empty_samples == 1  # "short": its one answer is unparseable
    assert results["prm_weighted_vote"].excluded == {
        "correct_unknown": 3,
        "no_step_scores": 2,
        "no_answer": 2,
        "no_outcome_score": 0,
    }
    # full (k capped at 3): best scored is right; short: wrong; no_scores: nothing usable -> 0
    assert results["prm_mean"].accuracy == pytest.approx(1 / 3)
    assert results["random"].accuracy == pytest.approx((2 / 3 + 0 + 1 / 2) / 3)
    assert results["oracle"].accuracy == pytest.approx(2 / 3)


def test_no_samples_gives_nan_not_an_error():
    res = bon_at_k([SampleCandidates("x", [cand(None)])], get_strategy("prm_mean"), 2)
    assert res.samples == 0 and res.dropped_samples == 1 and res.accuracy != res.accuracy
