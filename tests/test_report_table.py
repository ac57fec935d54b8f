import io
import random

import pandas as pd
import pytest
from PIL import Image

from vlmeval_prm.report.table import bon_table, print_report, write_report
from vlmeval_prm.select.bon_at_k import MonteCarlo, bon_at_k
from vlmeval_prm.select.strategies import REASONS, STRATEGIES, Candidate, SampleCandidates

KS = [1, 2, 4, 8]


def make_samples(count=12, n=8, seed=0):
    rng = random.Random(seed)
    samples = []
    for q in range(count):
        cands = []
        for _ in range(n if q % 4 else n - 3):  # every fourth question is short
            correct = rng.random() < 0.45
            scores = [0.3 * correct + 0.7 * rng.random() for _ in range(rng.randint(1, 4))]
            cands.append(
                Candidate(
                    "t",
                    rng.choice("abc") if rng.random() > 0.1 else None,
                    correct,
                    scores if rng.random() > 0.1 else None,
                    rng.random(),
                )
            )
        cands[0].correct = None if q == 4 else cands[0].correct  # q4 is also short
        samples.append(SampleCandidates(f"q{q}", cands))
    return samples


@pytest.fixture(scope="module")
def tables():
    return bon_table(make_samples(), KS, mc=MonteCarlo(exact_limit=50, draws=500))


def test_table_has_every_strategy_and_n(tables):
    table, excl = tables
    assert list(table.index) == list(STRATEGIES) == list(excl.index)
    assert list(table.columns) == KS
    assert ((table >= 0) & (table <= 100)).all().all()
    for name in STRATEGIES:
        assert (table.loc["oracle"] >= table.loc[name] - 1e-9).all()


def test_table_values_are_bon_at_k_in_percent(tables):
    table, _ = tables
    mc = MonteCarlo(exact_limit=50, draws=500)
    for name in ("prm_mean", "self_consistency", "random"):
        for k in KS:
            assert table.loc[name, k] == pytest.approx(100 * bon_at_k(make_samples(), name, k, mc).accuracy)


def test_exclusions_table_counts(tables):
    _, excl = tables
    assert set(excl.columns) >= {
        "samples",
        "dropped_samples",
        "empty_samples",
        "capped_samples",
        "monte_carlo_ks",
        "monte_carlo_draws",
        *REASONS,
    }
    assert (excl["samples"] == 12).all() and (excl["capped_samples"] == 3).all()
    assert (excl["correct_unknown"] == 1).all()
    assert excl.loc["prm_mean", "no_step_scores"] > 0 and excl.loc["self_consistency", "no_answer"] > 0
    assert excl.loc["self_consistency", "monte_carlo_draws"] == 500  # C(8, 4) = 70 > 50
    assert excl.loc["prm_mean", "monte_carlo_ks"] == 0


def test_ks_are_validated():
    with pytest.raises(ValueError):
        bon_table(make_samples(), [0, 2])


def test_written_files_match_the_dataframes(tables, tmp_path):
    table, excl = tables
    paths = write_report(table, excl, str(tmp_path / "out" / "run"))
    assert set(paths) == {"table_csv", "exclusions_csv", "xlsx", "png"}

    csv_table = pd.read_csv(paths["table_csv"], index_col="strategy")
    csv_table.columns = csv_table.columns.astype(int)
    pd.testing.assert_frame_equal(csv_table, table, check_names=False, rtol=0, atol=1e-12)
    pd.testing.assert_frame_equal(
        pd.read_csv(paths["exclusions_csv"], index_col="strategy"), excl, check_names=False, check_dtype=False
    )

    xl_table = pd.read_excel(paths["xlsx"], sheet_name="bon", index_col=0)
    xl_table.columns = xl_table.columns.astype(int)
    pd.testing.assert_frame_equal(xl_table, table, check_names=False, rtol=0, atol=1e-12)
    pd.testing.assert_frame_equal(
        pd.read_excel(paths["xlsx"], sheet_name="exclusions", index_col=0), excl, check_names=False, check_dtype=False
    )

    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(paths["png"]) as img:
        img.verify()
    with Image.open(paths["png"]) as img:
        assert img.size == (840, 540)  # 7 x 4.5 inches at 120 dpi


def test_print_report_shows_both_tables(tables):
    out = io.StringIO()
    print_report(*tables, file=out)
    text = out.getvalue()
    for name in STRATEGIES:
        assert text.count(name) == 2
    assert f"{tables[0].loc['oracle', 8]:.1f}" in text
