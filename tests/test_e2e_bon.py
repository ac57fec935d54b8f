"""Best-of-N end to end through the real ``python -m vlmeval.run`` (ms-vlmeval) on CPU, tiny models."""

import collections
import glob
import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
from commands import vlmeval_run_command

from vlmeval_prm.constants import COUNTERS_ENV, DEMO_ENV
from vlmeval_prm.counters import read_counter_file
from vlmeval_prm.store.jsonl import index_records, read_records

pytestmark = pytest.mark.e2e
MODEL, DATA, N, ROWS = "VLMEvalPRM-TinyPolicy-BoN4", "VLMEvalPRM_MiniMCQ", 4, 36


def vlmeval_run(work, counters, wait=True):
    (work / "LMUData").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "LMUData": str(work / "LMUData"),
        COUNTERS_ENV: str(counters),
        "PYTHONUNBUFFERED": "1",
        DEMO_ENV: "1",
    }
    cmd = vlmeval_run_command(["--model", MODEL, "--data", DATA], work / "outputs")
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


def store_file(work):
    return work / "outputs" / MODEL / f"{MODEL}_{DATA}_bon_candidates.jsonl"


def prediction_file(work):
    files = glob.glob(str(work / "outputs" / MODEL / f"{MODEL}_{DATA}.xlsx")) + glob.glob(
        str(work / "outputs" / MODEL / f"{MODEL}_{DATA}.tsv")
    )
    assert files, "no prediction file: the run failed (run.py exits 0 even then)"
    return files[0]


def check_store(work):
    samples = index_records(read_records(str(store_file(work))))
    assert len(samples) == ROWS
    for entry in samples.values():
        assert sorted(entry.candidates) == list(range(N))
        for i in range(N):
            rec = entry.score(i, "transformers:tiny:prm")
            assert rec is not None
            if rec.error is None:
                assert len(rec.step_scores) == len(rec.steps) >= 1
                assert all(0.0 <= s <= 1.0 for s in rec.step_scores)
            else:  # only a candidate with no steps may fail here
                assert rec.steps == [] and not rec.retry
    return samples


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_paths):
    work = tmp_path_factory.mktemp("e2e")
    counters = work / "counters1.jsonl"
    out = vlmeval_run(work, counters)
    return work, out, read_counter_file(str(counters))


def test_first_run_writes_predictions_scores_and_store(first_run):
    work, out, counts = first_run
    samples = check_store(work)
    pred = (
        pd.read_excel(prediction_file(work))
        if prediction_file(work).endswith("xlsx")
        else pd.read_csv(prediction_file(work), sep="\t")
    )
    assert len(pred) == ROWS
    summaries = [json.loads(x) for x in pred["extra_records"]]
    assert {s["key"] for s in summaries} == set(samples)
    for s, text in zip(summaries, pred["prediction"]):
        entry = samples[s["key"]]
        if s["chosen"] is not None:
            assert text == entry.text(s["chosen"])
            best = max(x for x in s["scores"] if x is not None)
            assert s["scores"][s["chosen"]] == best
    acc = glob.glob(str(work / "outputs" / MODEL / f"{MODEL}_{DATA}_acc.*"))
    assert acc, out[-3000:]
    # batched sampling: one generate call per sample for all N candidates
    assert counts["policy_generate_calls"] == ROWS and counts["policy_sequences"] == ROWS * N
    scored = sum(1 for e in samples.values() for i in range(N) if e.score(i, "transformers:tiny:prm").steps)
    assert counts["prm_sequences"] == scored


def test_identical_rerun_does_no_work(first_run, tmp_path):
    work, _, _ = first_run
    counters = tmp_path / "c.jsonl"
    vlmeval_run(work, counters)
    assert read_counter_file(str(counters)) == collections.Counter()


def test_rerun_without_predictions_is_served_by_the_store(first_run, tmp_path):
    """Delete VLMEvalKit's own outputs: the store alone must make the rerun free."""
    work, _, _ = first_run
    before = store_file(work).read_bytes()
    os.remove(prediction_file(work))
    counters = tmp_path / "c.jsonl"
    vlmeval_run(work, counters)
    counts = read_counter_file(str(counters))
    assert counts["policy_sequences"] == 0 and counts["prm_sequences"] == 0, counts
    assert store_file(work).read_bytes() == before
    prediction_file(work)


def test_kill_midway_then_resume_loses_nothing(tmp_path, tiny_paths):
    work = tmp_path
    proc = vlmeval_run(work, tmp_path / "c1.jsonl", wait=False)
    deadline = time.time() + 600
    while time.time() < deadline:
        if store_file(work).exists() and sum(1 for _ in read_records(str(store_file(work)))) > 40:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = index_records(read_records(str(store_file(work))))
    assert 0 < len(before) < ROWS, "kill landed outside the sampling phase; make the window larger"
    missing_candidates = sum(N - len(e.candidates) for e in before.values()) + N * (ROWS - len(before))
    scored_before = sum(1 for e in before.values() for i in range(N) if e.score(i, "transformers:tiny:prm"))
    counters = tmp_path / "c2.jsonl"
    vlmeval_run(work, counters)
    counts = read_counter_file(str(counters))
    after = check_store(work)
    assert counts["policy_sequences"] == missing_candidates
    for key, entry in before.items():  # nothing that existed was regenerated
        for i, cand in entry.candidates.items():
            assert after[key].text(i) == cand.text
    scored_now = sum(1 for e in after.values() for i in range(N) if e.score(i, "transformers:tiny:prm").steps)
    newly_scored = scored_now - sum(
        1
        for e in before.values()
        for i in range(N)
        if e.score(i, "transformers:tiny:prm") and e.score(i, "transformers:tiny:prm").steps
    )
    assert counts["prm_sequences"] == newly_scored
    assert scored_before <= N * len(before)
    prediction_file(work)
