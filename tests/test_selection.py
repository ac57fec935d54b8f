import math

import pytest

from vlmeval_prm.select.strategies import (
    ARGMAX,
    ORACLE,
    RANDOM,
    STRATEGIES,
    VOTE,
    Candidate,
    get_strategy,
    strategy,
    subset_outcome,
)


def cand(correct, scores=(0.5,), answer="a", outcome=None):
    return Candidate(text="t", answer=answer, correct=correct,
                     step_scores=None if scores is None else list(scores), outcome_score=outcome)


def test_registry_names_and_kinds():
    kinds = {name: s.kind for name, s in STRATEGIES.items()}
    assert kinds == {"prm_mean": ARGMAX, "prm_min": ARGMAX, "prm_last": ARGMAX, "prm_product": ARGMAX,
                     "orm": ARGMAX, "self_consistency": VOTE, "prm_weighted_vote": VOTE,
                     "random": RANDOM, "oracle": ORACLE}


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


@pytest.mark.parametrize("name,expected", [
    # steps: [0.9, 0.1] wrong, [0.6, 0.6] right, [0.2, 0.95] wrong
    ("prm_mean", 1.0),     # means 0.5 / 0.6 / 0.575
    ("prm_min", 1.0),      # mins 0.1 / 0.6 / 0.2
    ("prm_last", 0.0),     # lasts 0.1 / 0.6 / 0.95
    ("prm_product", 1.0),  # products 0.09 / 0.36 / 0.19
])
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


def test_all_abstaining_subset_is_wrong():
    assert subset_outcome("prm_mean", [cand(True, None), cand(True, None)]) == 0.0
    assert subset_outcome("self_consistency", [cand(True, answer=None)]) == 0.0


def test_self_consistency_majority_and_earliest_first_occurrence_tie_break():
    cands = [cand(False, answer="x"), cand(True, answer="y"), cand(True, answer="y"), cand(False, answer="x")]
    assert subset_outcome("self_consistency", cands[:3]) == 1.0  # y has 2 votes
    assert subset_outcome("self_consistency", cands) == 0.0  # 2-2 tie: x occurs first
    assert subset_outcome("self_consistency", cands[1:]) == 1.0  # y leads 2-1


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
