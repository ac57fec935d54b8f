"""VisualProcessBench macro F1 against scikit-learn, on the fixture release's labels."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from vlmeval_prm.datasets.process_metric import (
    OVERALL,
    THRESHOLD_GRID,
    best_threshold,
    explode_steps,
    macro_f1,
    summarize,
    threshold_labels,
)

FIXTURE = Path(__file__).parent / "fixtures" / "visualprocessbench" / "test.jsonl"


def sk_macro(gold, pred) -> float:
    return f1_score(gold, pred, labels=[1, -1], average="macro", zero_division=0)


def fixture_samples(seed: int = 0) -> pd.DataFrame:
    """The fixture's gold labels with deterministic random P(+) per step."""
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "data_source": [r["data_source"] for r in rows],
            "labels": [r["response"]["process_correctness"] for r in rows],
            "pred": [rng.random(len(r["response"]["steps"])).tolist() for r in rows],
        }
    )


def pooled(samples: pd.DataFrame, source: str | None = None):
    """Non-neutral gold labels and scores of one source (or all), flattened in order."""
    sel = samples if source is None else samples[samples["data_source"] == source]
    pairs = [(g, p) for labels, pred in zip(sel["labels"], sel["pred"]) for g, p in zip(labels, pred) if g != 0]
    return np.array([g for g, _ in pairs]), np.array([p for _, p in pairs])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, -1]), st.sampled_from([1, -1])), min_size=1, max_size=60))
def test_macro_f1_equals_sklearn(pairs):
    gold, pred = zip(*pairs)
    f1, f_pos, f_neg = macro_f1(gold, pred)
    assert f1 == pytest.approx(sk_macro(gold, pred))
    assert f_pos == pytest.approx(f1_score(gold, pred, pos_label=1, zero_division=0))
    assert f_neg == pytest.approx(f1_score(gold, pred, pos_label=-1, zero_division=0))


def test_all_correct_steps_predicted_correct_score_half():
    # F1(incorrect) is undefined (no gold, no predicted): 0, as scikit-learn with zero_division=0.
    assert macro_f1([1, 1, 1], [1, 1, 1])[0] == pytest.approx(0.5) == pytest.approx(sk_macro([1, 1, 1], [1, 1, 1]))
    assert macro_f1([-1, -1], [-1, -1])[0] == pytest.approx(0.5)


def test_summary_per_source_and_pooled_overall_match_sklearn():
    samples = fixture_samples()
    table = summarize(samples, "score").set_index("data_source")
    assert list(table.index) == ["DynaMath", "MMMU", "MathVision", OVERALL]
    for source in ["DynaMath", "MMMU", "MathVision", None]:
        gold, scores = pooled(samples, source)
        row = table.loc[source or OVERALL]
        assert row["steps"] == len(gold)
        assert row["F1"] == pytest.approx(100 * sk_macro(gold, np.where(scores > 0.5, 1, -1)))
    # Overall pools steps; on this fixture that differs from the mean of the sources.
    assert table.loc[OVERALL, "F1"] != pytest.approx(table.drop(OVERALL)["F1"].mean())
    assert table.loc[OVERALL, "samples"] == len(samples) and table.loc[OVERALL, "failed"] == 0


def test_neutral_steps_do_not_affect_the_score():
    samples = fixture_samples()
    flipped = samples.copy()
    flipped["pred"] = [
        [1 - p if g == 0 else p for g, p in zip(lab, pred)] for lab, pred in zip(samples["labels"], samples["pred"])
    ]
    a, b = summarize(samples, "score"), summarize(flipped, "score")
    pd.testing.assert_frame_equal(a, b)
    neutral_only = samples.index[samples["labels"].map(lambda x: set(x) == {0})]
    assert len(neutral_only) == 1 and explode_steps(samples.loc[neutral_only]).empty


def test_failed_samples_excluded_and_counted_wrong_in_pessimistic():
    samples = fixture_samples()
    samples.at[0, "pred"] = None  # MathVision sample: labels [1, 1, -1]
    table = summarize(samples, "score").set_index("data_source")
    assert table.loc["MathVision", "failed"] == 1 and table.loc[OVERALL, "failed"] == 1
    rest = samples.drop(index=0)
    gold, scores = pooled(rest)
    pred = np.where(scores > 0.5, 1, -1)
    assert table.loc[OVERALL, "F1"] == pytest.approx(100 * sk_macro(gold, pred))
    gold_failed = np.array([1, 1, -1])
    expected = sk_macro(np.concatenate([gold, gold_failed]), np.concatenate([pred, -gold_failed]))
    assert table.loc[OVERALL, "F1_pessimistic"] == pytest.approx(100 * expected)
    assert table.loc[OVERALL, "F1_pessimistic"] < table.loc[OVERALL, "F1"]


def test_threshold_is_strict_and_configurable():
    assert threshold_labels([0.5, 0.49, 0.51], 0.5).tolist() == [-1, -1, 1]  # correct only when P(+) > t
    assert threshold_labels([0.85, 0.8501], 0.85).tolist() == [-1, 1]
    samples = pd.DataFrame({"data_source": ["S"], "labels": [[1, -1, 1, -1]], "pred": [[0.9, 0.35, 0.4, 0.1]]})
    at_half = summarize(samples, "score").iloc[-1]
    at_03 = summarize(samples, "score", threshold=0.3).iloc[-1]
    assert at_half["F1"] == pytest.approx(100 * sk_macro([1, -1, 1, -1], [1, -1, -1, -1]))
    assert at_03["F1"] == pytest.approx(100 * sk_macro([1, -1, 1, -1], [1, 1, 1, -1]))
    assert at_03["threshold"] == 0.3


def test_sweep_finds_the_separating_threshold_lowest_on_ties():
    gold = [1, 1, -1, -1]
    scores = [0.8, 0.7, 0.3, 0.2]
    t, f1 = best_threshold(gold, scores)
    assert f1 == pytest.approx(1.0)
    assert t == pytest.approx(0.30)  # every t in [0.30, 0.70) separates; the lowest grid point wins
    assert THRESHOLD_GRID[0] == 0.0 and THRESHOLD_GRID[-1] == 1.0 and len(THRESHOLD_GRID) == 101
    row = summarize(pd.DataFrame({"data_source": ["S"], "labels": [gold], "pred": [scores]}), "score").iloc[-1]
    assert row["F1_best"] == pytest.approx(100) and row["best_threshold"] == pytest.approx(0.30)


def test_critic_labels_are_scored_without_threshold():
    samples = pd.DataFrame({"data_source": ["A", "B"], "labels": [[1, -1, 0], [1, 1]], "pred": [[1, 1, -1], [1, -1]]})
    table = summarize(samples, "label").set_index("data_source")
    assert "best_threshold" not in table.columns
    assert table.loc[OVERALL, "F1"] == pytest.approx(100 * sk_macro([1, -1, 1, 1], [1, 1, 1, -1]))


def test_source_without_scorable_steps_reports_nan_not_zero():
    samples = pd.DataFrame({"data_source": ["A", "B"], "labels": [[1, -1], [0, 0]], "pred": [[0.9, 0.1], [0.5, 0.5]]})
    table = summarize(samples, "score").set_index("data_source")
    assert np.isnan(table.loc["B", "F1"]) and table.loc["B", "steps"] == 0
    assert table.loc[OVERALL, "F1"] == pytest.approx(100)


def test_prediction_length_must_match_labels():
    with pytest.raises(ValueError, match="sample 0: 2 predictions for 3 steps"):
        explode_steps(pd.DataFrame({"data_source": ["A"], "labels": [[1, 1, -1]], "pred": [[0.1, 0.2]]}))


def test_the_threshold_is_printed_with_the_results(caplog):
    import logging

    from vlmeval_prm.datasets.visualprocessbench import _log_summary

    caplog.set_level(logging.INFO)
    samples = pd.DataFrame({"data_source": ["S"], "labels": [[1, -1]], "pred": [[0.9, 0.2]]})
    summary = summarize(samples, "score", threshold=0.85)
    details = pd.DataFrame({"result": ["ok"]})
    _log_summary("VisualProcessBench", "score", summary, details)
    assert "a step is correct when P(+) > 0.85" in caplog.text
    assert "threshold" in caplog.text and "best_threshold" in caplog.text  # the table's columns
