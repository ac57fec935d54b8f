"""``vlmeval-prm report`` (the console script, as a user runs it) on a run written by the previous
version: tests/fixtures/store_v0 holds 5 rows of a real demo run whose store lines carry no schema
version (see its README). The table's numbers are recomputed here from the raw JSON lines and from
VLMEvalKit's own per-candidate verdicts, not with the report's code."""

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from itertools import combinations

import pandas as pd
import pytest

from vlmeval_prm.select.answers import extract_answer

MODEL, DATA, N, PRM = "VLMEvalPRM-TinyPolicy-BoN4", "VLMEvalPRM_MiniMCQ", 4, "transformers:tiny:prm"
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "store_v0")
CLI = os.path.join(os.path.dirname(sys.executable), "vlmeval-prm")
KS = [1, 2, 4]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    work = tmp_path_factory.mktemp("v0")
    shutil.copytree(FIXTURE, work / "outputs")
    (work / "LMUData").mkdir()
    env = {**os.environ, "LMUData": str(work / "LMUData"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [CLI, "report", "--work-dir", str(work / "outputs"), "--model", MODEL, "--data", DATA],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    return work / "outputs" / MODEL, proc.stdout


def stored(root):
    """Per row: the raw store lines' candidates (text, mean step score) and VLMEvalKit's verdicts."""
    pred = pd.read_excel(root / f"{MODEL}_{DATA}.xlsx")
    lines = [json.loads(line) for line in open(root / f"{MODEL}_{DATA}_bon_candidates.jsonl", encoding="utf-8")]
    hits = []
    for i in range(N):
        detail = pd.read_excel(root / "bon_report" / f"cand_{i}" / f"{MODEL}_{DATA}_exact_matching_result.xlsx")
        hits.append(dict(zip(detail["index"], detail["hit"].astype(bool))))
    rows = []
    for _, row in pred.iterrows():
        key = json.loads(row["extra_records"])["key"]
        text = {r["i"]: r["text"] for r in lines if r["kind"] == "candidate" and r["key"] == key}
        steps = {r["i"]: r["step_scores"] for r in lines if r["kind"] == "score" and r["key"] == key}
        choices = {c: str(row[c]) for c in "ABCD"}
        rows.append(
            [
                {
                    "correct": hits[i][row["index"]],
                    "mean": sum(steps[i]) / len(steps[i]),
                    "answer": extract_answer(text[i], "MCQ", choices),
                }
                for i in range(N)
            ]
        )
    return rows


def argmax(subset):
    best = max(c["mean"] for c in subset)
    tied = [c["correct"] for c in subset if c["mean"] == best]
    return Fraction(sum(tied), len(tied))


def vote(subset):
    votes = {}
    for c in subset:
        if c["answer"] is not None:
            votes.setdefault(c["answer"], []).append(c["correct"])
    if not votes:
        return Fraction(0)
    top = max(len(v) for v in votes.values())
    winners = [v for v in votes.values() if len(v) == top]  # a tie is shared uniformly between answers
    return sum(Fraction(sum(v), len(v)) for v in winners) / len(winners)


def expected(rows, rule, k):
    per_row = [sum(rule(s) for s in combinations(cands, k)) / len(list(combinations(cands, k))) for cands in rows]
    return float(100 * sum(per_row) / len(rows))


def test_report_reads_a_version_0_store_and_its_numbers_match_the_stored_data(reported):
    root, stdout = reported
    assert "Best-of-N accuracy (%) by N" in stdout and "5 questions, N = 4" in stdout
    table = pd.read_csv(root / f"{MODEL}_{DATA}_bon_report_bon.csv", index_col="strategy")
    assert [int(c) for c in table.columns] == KS
    rows = stored(root)
    assert sum(c["correct"] for cands in rows for c in cands) == 4  # the fixture has right and wrong candidates
    for k in KS:
        assert table.loc["prm_mean", str(k)] == pytest.approx(expected(rows, argmax, k), abs=1e-9)
        assert table.loc["self_consistency", str(k)] == pytest.approx(expected(rows, vote, k), abs=1e-9)
        assert table.loc["oracle", str(k)] == pytest.approx(expected(rows, lambda s: any(c["correct"] for c in s), k))
        assert table.loc["random", str(k)] == pytest.approx(20.0)  # 4 right of 20
    assert table.loc["oracle", "4"] == pytest.approx(60.0)
    # one row ties 1-1 between a right and a wrong answer: shared, not won by the first seen (60.0)
    assert table.loc["self_consistency", "4"] == pytest.approx(50.0)
    # the report's PRM row at N agrees with the run's own choice wherever the run had no tie
    pred = pd.read_excel(root / f"{MODEL}_{DATA}.xlsx")
    chosen = [json.loads(x)["chosen"] for x in pred["extra_records"]]
    assert table.loc["prm_mean", "4"] == pytest.approx(100 * sum(r[c]["correct"] for r, c in zip(rows, chosen)) / 5)
