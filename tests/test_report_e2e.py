"""``vlmeval-prm report`` on a real Best-of-8 run through ``python -m vlmeval.run`` (tiny models, CPU).

The report's numbers are checked against a recomputation from other sources: VLMEvalKit's own
per-row verdicts (``hit``) for every candidate, BestOfN's per-row summary scores, the store's ORM
scores, and VLMEvalKit's accuracy for the run itself.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from commands import vlmeval_run_command

from vlmeval_prm.constants import DEMO_ENV
from vlmeval_prm.store.jsonl import encode, index_records, read_records
from vlmeval_prm.store.records import CandidateRecord

pytestmark = pytest.mark.e2e
MODEL, DATA, N, ROWS, PRM = "VLMEvalPRM-TinyPolicy-BoN8", "VLMEvalPRM_MiniMCQ", 8, 36, "transformers:tiny:prm"
KS = [1, 2, 4, 8]
CLI = os.path.join(os.path.dirname(sys.executable), "vlmeval-prm")


def env_for(work):
    return {
        **os.environ,
        "LMUData": str(work / "LMUData"),
        "VLMEVAL_PRM_OPTIONS": '{"orm": true}',
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        DEMO_ENV: "1",
    }


def run(cmd, work):
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=work, env=env_for(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
    )
    return proc, time.monotonic() - start


def root(work):
    return work / "outputs" / MODEL


@pytest.fixture(scope="module")
def reported(tmp_path_factory, tiny_paths):
    """One BoN-8 run (with ORM scores), then the report through the console script."""
    work = tmp_path_factory.mktemp("report")
    (work / "LMUData").mkdir()
    proc, t_run = run(vlmeval_run_command(["--model", MODEL, "--data", DATA], work / "outputs"), work)
    assert proc.returncode == 0 and (root(work) / f"{MODEL}_{DATA}.xlsx").exists(), proc.stdout[-4000:]
    proc, t_report = run(
        [
            CLI,
            "report",
            "--work-dir",
            str(work / "outputs"),
            "--model",
            MODEL,
            "--data",
            DATA,
            "--judge",
            "exact_matching",
        ],
        work,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    print(f"\nvlmeval.run BoN-8: {t_run:.1f} s; vlmeval-prm report (first, judging 8 candidates): {t_report:.1f} s")
    return work, proc.stdout


def prefix(work):
    return root(work) / f"{MODEL}_{DATA}_bon_report"


def expected_at_n(work):
    """BoN@8 per strategy, recomputed without the report's code."""
    pred = pd.read_excel(root(work) / f"{MODEL}_{DATA}.xlsx")
    summaries = [json.loads(x) for x in pred["extra_records"]]
    store = index_records(read_records(str(root(work) / f"{MODEL}_{DATA}_bon_candidates.jsonl")))
    hits = []  # hits[i][index]: VLMEvalKit's own verdict on candidate i
    for i in range(N):
        detail = pd.read_excel(root(work) / "bon_report" / f"cand_{i}" / f"{MODEL}_{DATA}_exact_matching_result.xlsx")
        hits.append(dict(zip(detail["index"], detail["hit"].astype(bool))))

    def argmax_outcome(values, correct):
        usable = [(v, c) for v, c in zip(values, correct) if v is not None]
        if not usable:
            return 0.0
        best = max(v for v, _ in usable)
        tied = [c for v, c in usable if v == best]  # a tie is broken uniformly: mean of the tied
        return sum(tied) / len(tied)

    totals = {"prm_mean": 0.0, "orm": 0.0, "oracle": 0.0, "random": 0.0}
    chosen_correct, ties = [], 0
    for index, summary in zip(pred["index"], summaries):
        correct = [hits[i][index] for i in range(N)]
        entry = store[summary["key"]]
        outcome = [entry.score(i, PRM, "outcome") for i in range(N)]
        orm = [r.step_scores[0] if r and r.error is None else None for r in outcome]
        totals["prm_mean"] += argmax_outcome(summary["scores"], correct)
        totals["orm"] += argmax_outcome(orm, correct)
        totals["oracle"] += any(correct)
        totals["random"] += sum(correct) / N
        valid = [s for s in summary["scores"] if s is not None]
        ties += valid.count(max(valid)) > 1
        chosen_correct.append(correct[summary["chosen"]])
    return {k: 100 * v / ROWS for k, v in totals.items()}, chosen_correct, ties


def test_report_files_and_numbers_match_a_recomputation(reported):
    work, stdout = reported
    assert "Best-of-N accuracy (%) by N" in stdout and "Left out" in stdout
    table = pd.read_csv(f"{prefix(work)}_bon.csv", index_col="strategy")
    assert [int(c) for c in table.columns] == KS
    xlsx = pd.read_excel(f"{prefix(work)}.xlsx", sheet_name=None, index_col=0)
    assert set(xlsx) == {"bon", "exclusions"}
    pd.testing.assert_frame_equal(xlsx["bon"].set_axis(table.columns, axis=1), table, check_names=False)
    with open(f"{prefix(work)}_bon.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    excl = pd.read_csv(f"{prefix(work)}_exclusions.csv", index_col="strategy")
    assert (excl["samples"] == ROWS).all() and (excl["dropped_samples"] == 0).all()

    expected, chosen_correct, ties = expected_at_n(work)
    for name, value in expected.items():
        assert table.loc[name, "8"] == pytest.approx(value, abs=1e-9), name
    assert table.loc["random"].tolist() == pytest.approx([expected["random"]] * len(KS))
    for name in table.index:  # one candidate: every strategy is a uniform draw
        assert table.loc[name, "1"] == pytest.approx(expected["random"]), name

    # the report judges as VLMEvalKit does: the winner's verdict is VLMEvalKit's verdict on the run
    run_detail = pd.read_excel(root(work) / f"{MODEL}_{DATA}_exact_matching_result.xlsx")
    assert run_detail["hit"].astype(bool).tolist() == chosen_correct
    if ties == 0:  # then BoN@N by prm_mean is exactly the accuracy VLMEvalKit reports for the BoN model
        acc = pd.read_csv(root(work) / f"{MODEL}_{DATA}_acc.csv")
        assert table.loc["prm_mean", "8"] == pytest.approx(100 * acc.loc[0, "Overall"])


def test_second_report_calls_no_evaluate(reported, monkeypatch):
    """In-process this time, to count calls of the dataset's real evaluate()."""
    from vlmeval_prm.datasets.mini_mcq import VLMEvalPRMMiniMCQ
    from vlmeval_prm.report.collect import report

    work, _ = reported
    monkeypatch.setenv("LMUData", str(work / "LMUData"))
    calls = []
    real = VLMEvalPRMMiniMCQ.evaluate

    @functools.wraps(real)
    def counted(self, eval_file, **kwargs):
        calls.append(eval_file)
        return real(self, eval_file, **kwargs)

    monkeypatch.setattr(VLMEvalPRMMiniMCQ, "evaluate", counted)
    before = pd.read_csv(f"{prefix(work)}_bon.csv", index_col="strategy")
    start = time.monotonic()
    result = report([(str(work / "outputs"), MODEL, DATA)], judge="exact_matching")
    print(f"\nsecond report (cached verdicts): {time.monotonic() - start:.1f} s")
    assert calls == []
    got = result[(str(work / "outputs"), MODEL, DATA)]["table"]
    assert got.index.tolist() == before.index.tolist()
    np.testing.assert_allclose(got.to_numpy(), before.to_numpy(), rtol=0, atol=1e-12)


def _damage(work, target):
    """A copy of the run with failed scores, missing and text-less candidates, and a row without summary."""
    shutil.copytree(root(work), root(target))
    store_path = root(target) / f"{MODEL}_{DATA}_bon_candidates.jsonl"
    records = list(read_records(str(store_path)))
    samples = index_records(records)
    keys = [json.loads(x)["key"] for x in pd.read_excel(root(target) / f"{MODEL}_{DATA}.xlsx")["extra_records"]]
    healthy = [
        k for k in keys if all(samples[k].score(i, PRM, m).error is None for i in range(N) for m in ("step", "outcome"))
    ]
    assert len(healthy) >= 8, "the tiny run has too many failed scores for this test"
    failed_scores, short, textless, unsummarised = healthy[:3], healthy[3], healthy[4], healthy[5]
    kept = [
        r
        for r in records
        if not (r.kind == "score" and r.key in failed_scores and r.i == 0)
        and not (r.kind == "candidate" and r.key == short and r.i >= 6)
    ]
    kept.append(CandidateRecord(key=textless, i=2, text=None, error="timeout", policy="x"))
    store_path.write_bytes(b"".join(encode(r) for r in kept))
    pred = pd.read_excel(root(target) / f"{MODEL}_{DATA}.xlsx")
    pred.loc[keys.index(unsummarised), "extra_records"] = None
    pred.to_excel(root(target) / f"{MODEL}_{DATA}.xlsx", index=False)


def test_bad_input_is_counted_not_fatal(reported, tmp_path, monkeypatch):
    from vlmeval_prm.report.collect import report

    work, _ = reported
    monkeypatch.setenv("LMUData", str(work / "LMUData"))
    _damage(work, tmp_path)
    base = pd.read_csv(f"{prefix(work)}_exclusions.csv", index_col="strategy")
    result = report([(str(tmp_path / "outputs"), MODEL, DATA)], judge="exact_matching")
    got = result[(str(tmp_path / "outputs"), MODEL, DATA)]
    assert got["notes"] == {
        "rows": ROWS,
        "rows_without_summary": 1,
        "rows_not_in_store": 0,
        "rows_with_fewer_than_n": 1,
        "candidates_without_text": 1,
    }
    excl = got["exclusions"]
    assert (excl["samples"] == ROWS - 1).all() and (excl["dropped_samples"] == 1).all()
    assert (excl["correct_unknown"] == base["correct_unknown"] + 1).all()
    assert (excl["capped_samples"] == 2).all()  # 6 stored candidates; 7 with known correctness
    for name in ("prm_mean", "prm_min", "prm_last", "prm_product"):  # votes list answerless ones as no_answer
        assert excl.loc[name, "no_step_scores"] == base.loc[name, "no_step_scores"] + 3, name
    assert excl.loc["orm", "no_outcome_score"] == base.loc["orm", "no_outcome_score"] + 3
    assert os.path.exists(got["paths"]["png"])


def test_a_missing_run_is_reported_as_an_error(reported, tmp_path, monkeypatch):
    from vlmeval_prm.report.collect import report

    work, _ = reported
    monkeypatch.setenv("LMUData", str(work / "LMUData"))
    runs = [(str(tmp_path), "Nobody-BoN8", DATA), (str(work / "outputs"), MODEL, DATA)]
    result = report(runs, judge="exact_matching")
    assert "no prediction file" in result[runs[0]]["error"]
    assert "table" in result[runs[1]]  # the other run is still reported
