import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmeval_prm.select.strategies import (
    ARGMAX,
    ORACLE,
    RANDOM,
    STRATEGIES,
    VOTE,
    Candidate,
    get_strategy,
    pick,
    pick_probabilities,
    strategy,
    subset_outcome,
    vote_totals,
)


def cand(correct, scores=(0.5,), answer="a", outcome=None):
    return Candidate(
        text="t",
        answer=answer,
        correct=correct,
        step_scores=None if scores is None else list(scores),
        outcome_score=outcome,
    )


_score = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 0.1, 0.2, 0.3, math.nan])
_candidate = st.builds(
    lambda correct, scores, answer, outcome: Candidate("t", answer, correct, scores, outcome),
    correct=st.booleans(),
    scores=st.one_of(st.none(), st.lists(_score, min_size=0, max_size=3)),
    answer=st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
    outcome=st.one_of(st.none(), _score),
)


def test_registry_names_and_kinds():
    kinds = {name: s.kind for name, s in STRATEGIES.items()}
    assert kinds == {
        "prm_mean": ARGMAX,
        "prm_min": ARGMAX,
        "prm_last": ARGMAX,
        "prm_product": ARGMAX,
        "orm": ARGMAX,
        "self_consistency": VOTE,
        "prm_weighted_vote": VOTE,
        "random": RANDOM,
        "oracle": ORACLE,
    }


def test_unknown_strategy_names_the_choices():
    with pytest.raises(KeyError, match="prm_mean"):
        get_strategy("nope")


def test_decorator_registers_a_new_strategy():
    try:

        @strategy("longest", ARGMAX, missing="no_text")
        def _length(c):
            return None if c.text is None else len(c.text)

        s = get_strategy("longest")
        short, long = cand(False), cand(True)
        long.text = "much longer"
        assert subset_outcome(s, [short, long]) == 1.0
        assert s.abstain_reason(Candidate(None, "a", True, None)) == "no_text"
    finally:
        STRATEGIES.pop("longest", None)


@pytest.mark.parametrize(
    "name,expected",
    [
        # steps: [0.9, 0.1] wrong, [0.6, 0.6] right, [0.2, 0.95] wrong
        ("prm_mean", 1.0),  # means 0.5 / 0.6 / 0.575
        ("prm_min", 1.0),  # mins 0.1 / 0.6 / 0.2
        ("prm_last", 0.0),  # lasts 0.1 / 0.6 / 0.95
        ("prm_product", 1.0),  # products 0.09 / 0.36 / 0.19
    ],
)
def test_prm_aggregations_pick_different_candidates(name, expected):
    cands = [cand(False, [0.9, 0.1]), cand(True, [0.6, 0.6]), cand(False, [0.2, 0.95])]
    assert subset_outcome(name, cands) == expected


def test_argmax_tie_is_mean_correctness_of_tied_candidates():
    cands = [cand(True, [0.7]), cand(False, [0.7]), cand(False, [0.7]), cand(True, [0.1])]
    assert subset_outcome("prm_mean", cands) == pytest.approx(1 / 3)


def test_orm_uses_outcome_score_and_abstains_without_it():
    cands = [cand(False, outcome=0.2), cand(True, outcome=0.8), cand(False, outcome=None)]
    assert subset_outcome("orm", cands) == 1.0
    assert get_strategy("orm").abstain_reason(cands[2]) == "no_outcome_score"


def test_failed_and_nan_scores_abstain():
    s = get_strategy("prm_mean")
    assert s.abstain_reason(cand(True, None)) == "no_step_scores"
    assert s.abstain_reason(cand(True, [])) == "no_step_scores"
    assert s.abstain_reason(cand(True, [math.nan])) == "no_step_scores"
    # the highest-scored candidate failed: the best of the rest wins
    assert subset_outcome(s, [cand(False, None), cand(True, [0.3]), cand(False, [0.2])]) == 1.0


@pytest.mark.parametrize("bad", [[math.nan, 0.9], [0.9, math.nan], [0.9, math.nan, 0.95], [math.inf], [0.9, -math.inf]])
@pytest.mark.parametrize("name", ["prm_mean", "prm_min", "prm_last", "prm_product", "prm_weighted_vote"])
def test_a_nan_or_inf_step_makes_the_candidate_unscored_wherever_it_sits(name, bad):
    # min() skips a NaN that is not first and last() sees only the final one: neither may decide
    s = get_strategy(name)
    unscored, scored = cand(True, bad, "x"), cand(False, [0.1], "y")
    assert s.value(unscored) is None and s.abstain_reason(unscored) == "no_step_scores"
    assert pick_probabilities(s, [unscored, scored]) == [0, 1]
    assert pick_probabilities(s, [scored, unscored]) == [1, 0]
    assert pick_probabilities(s, [unscored]) == [0]  # nothing scored: no answer


@settings(max_examples=200, deadline=None)
@given(pool=st.lists(_candidate, min_size=1, max_size=6), data=st.data())
def test_probabilities_are_a_distribution_over_usable_candidates_in_any_order(pool, data):
    order = data.draw(st.permutations(range(len(pool))))
    for name in STRATEGIES:
        s = get_strategy(name)
        probs = s.probabilities(pool)
        usable = [s.value(c) is not None for c in pool] if s.kind in (ARGMAX, VOTE) else [True] * len(pool)
        assert sum(probs) == (1 if any(usable) else 0)
        assert all(p == 0 for p, ok in zip(probs, usable) if not ok)  # unscored never picked over scored
        # order-independent: each candidate keeps its probability when the candidates are shuffled
        assert s.probabilities([pool[i] for i in order]) == [probs[i] for i in order]


def test_pick_is_seeded_by_the_key_and_spread_over_the_tie():
    cands = [cand(True, [0.7]), cand(False, [0.2]), cand(False, [0.7]), cand(True, [0.7, math.nan]), cand(True, [0.7])]
    picks = [pick("prm_mean", cands, f"key{j}") for j in range(600)]
    assert [pick("prm_mean", cands, f"key{j}") for j in range(600)] == picks  # a rerun picks the same
    counts = {i: picks.count(i) for i in range(5)}
    assert counts[1] == counts[3] == 0  # lower score; NaN step
    assert all(150 <= counts[i] <= 250 for i in (0, 2, 4)), counts  # 200 expected each; > 4 sd margin
    assert pick("prm_mean", [cand(True, None), cand(True, [math.nan])], "k") is None


def test_all_abstaining_subset_is_wrong():
    assert subset_outcome("prm_mean", [cand(True, None), cand(True, None)]) == 0.0
    assert subset_outcome("self_consistency", [cand(True, answer=None)]) == 0.0


def test_self_consistency_majority_and_uniform_tie_break():
    cands = [cand(False, answer="x"), cand(True, answer="y"), cand(True, answer="y"), cand(False, answer="x")]
    assert subset_outcome("self_consistency", cands[:3]) == 1.0  # y has 2 votes
    assert subset_outcome("self_consistency", cands) == 0.5  # 2-2 tie: x and y share the pick, in any order
    assert subset_outcome("self_consistency", cands[::-1]) == 0.5
    assert subset_outcome("self_consistency", cands[1:]) == 1.0  # y leads 2-1
    assert pick_probabilities("self_consistency", cands) == [Fraction(1, 4)] * 4


def test_tied_answers_share_the_pick_and_supporters_share_their_answers_share():
    # x: 2 votes, y: 2 votes, z: 1 vote -> x and y get 1/2 each, split between their 2 supporters
    cands = [
        cand(True, answer="x"),
        cand(False, answer="y"),
        cand(True, answer="z"),
        cand(True, answer="y"),
        cand(False, answer="x"),
        cand(True, answer=None),
    ]
    assert pick_probabilities("self_consistency", cands) == [
        Fraction(1, 4),
        Fraction(1, 4),
        0,
        Fraction(1, 4),
        Fraction(1, 4),
        0,
    ]


def test_weighted_vote_exact_tie_is_not_decided_by_float_rounding():
    # x and y hold the same weights, in another order: left-to-right float sums are 0.6000000000000001
    # and 0.6, but the exact totals are equal, so it is a tie (math.fsum, in the run and the report)
    assert (0.1 + 0.2) + 0.3 != (0.3 + 0.2) + 0.1
    cands = [
        cand(True, [0.1], "x"),
        cand(False, [0.3], "y"),
        cand(True, [0.2], "x"),
        cand(False, [0.2], "y"),
        cand(True, [0.3], "x"),
        cand(False, [0.1], "y"),
    ]
    assert subset_outcome("prm_weighted_vote", cands) == 0.5
    assert pick_probabilities("prm_weighted_vote", cands) == [Fraction(1, 6)] * 6
    assert vote_totals(get_strategy("prm_weighted_vote"), cands) == {"x": 0.6, "y": 0.6}


def test_unparseable_answers_do_not_vote():
    cands = [cand(False, answer=None), cand(False, answer=None), cand(True, answer="y")]
    assert subset_outcome("self_consistency", cands) == 1.0
    assert get_strategy("self_consistency").abstain_reason(cands[0]) == "no_answer"


def test_weighted_vote_can_overrule_the_majority():
    cands = [cand(False, [0.1], "x"), cand(False, [0.2], "x"), cand(True, [0.9], "y")]
    assert subset_outcome("self_consistency", cands) == 0.0
    assert subset_outcome("prm_weighted_vote", cands) == 1.0
    assert get_strategy("prm_weighted_vote").abstain_reason(cand(True, None, "y")) == "no_step_scores"


def test_vote_outcome_is_mean_correctness_of_the_winners_supporters():
    cands = [cand(True, answer="x"), cand(False, answer="x"), cand(True, answer="y")]
    assert subset_outcome("self_consistency", cands) == 0.5


def test_random_and_oracle():
    cands = [cand(False), cand(True), cand(False), cand(False)]
    assert subset_outcome("random", cands) == 0.25
    assert subset_outcome("oracle", cands) == 1.0
    assert subset_outcome("oracle", [cand(False)]) == 0.0


def test_subset_needs_known_correctness_and_a_candidate():
    with pytest.raises(ValueError):
        subset_outcome("random", [cand(None)])
    with pytest.raises(ValueError):
        subset_outcome("random", [])
