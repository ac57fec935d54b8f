"""Chaos: ``kill -9`` at random points of the tiny demo through the real ``python -m vlmeval.run``,
ten times, then one run to the end (after cutting VLMEvalKit's prediction file short, as a kill
while VLMEvalKit writes it would). Nothing is lost, no candidate is sampled twice, none is scored
twice, and the candidates are the ones an uninterrupted run samples (each candidate's sampling seed
comes from its sample key and index, not from how far the process got).

Bounded: Best-of-2 on 6 rows (``--limit``), so the eleven runs and the reference take a few minutes;
``VLMEVAL_PRM_CHAOS_SEED`` replays a particular schedule of kills.
"""

import collections
import os
import random
import signal
import subprocess
import time

import pytest
from commands import HOST, MiniRows, vlmeval_run_command
from test_faults_runs import check_whole, predictions

from vlmeval_prm.constants import COUNTERS_ENV, DEMO_ENV
from vlmeval_prm.counters import read_counter_file
from vlmeval_prm.store.jsonl import index_records, read_records

pytestmark = pytest.mark.e2e
MODEL, N, ROWS, KILLS = "VLMEvalPRM-TinyPolicy-BoN2", 2, 6, 10
MINI = MiniRows(ROWS)
DATA = MINI.data
SPEC = "transformers:tiny:prm"
LINES = ROWS * (1 + 2 * N)  # a sample line, then N candidate and N score lines per row


def start(work, counters):
    (work / "LMUData").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "LMUData": str(work / "LMUData"),
        COUNTERS_ENV: str(counters),
        DEMO_ENV: "1",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = vlmeval_run_command(["--model", MODEL, "--data", DATA], work / "outputs", *MINI.args(work / "LMUData"))
    return subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(proc):
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]


def store_path(work):
    return work / "outputs" / MODEL / f"{MODEL}_{DATA}_bon_candidates.jsonl"


def lines(work) -> int:
    path = store_path(work)
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_paths):
    work = tmp_path_factory.mktemp("reference")
    finish(start(work, work / "counters.jsonl"))
    return index_records(read_records(str(store_path(work))))


def test_kill_9_at_random_points_loses_nothing_and_redoes_nothing(tmp_path, uninterrupted):
    seed = int(os.environ.get("VLMEVAL_PRM_CHAOS_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    landed = []  # store lines when each kill landed
    for k in range(KILLS):
        # a random point a little further on: sampling, scoring, a write, or (once the store is complete)
        # VLMEvalKit's own steps: merging, writing the prediction file, evaluating
        target, extra = lines(tmp_path) + rng.randint(0, 3), rng.uniform(0.0, 0.3)
        proc = start(tmp_path, tmp_path / f"counters{k}.jsonl")
        deadline = time.time() + 600
        while proc.poll() is None and lines(tmp_path) < target and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(extra)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        landed.append(lines(tmp_path))
    print(f"seed {seed}: store lines when each kill landed: {landed} of {LINES}")
    assert sum(0 < n < LINES for n in landed) >= 2, f"too few kills landed mid-work: {landed} (seed {seed})"

    before = index_records(read_records(str(store_path(tmp_path))))
    missing = sum(N - sum(e.text(i) is not None for i in range(N)) for e in before.values()) + N * (ROWS - len(before))
    # and a kill in the middle of VLMEvalKit writing its prediction file (in place) leaves it cut short
    pred = tmp_path / "outputs" / MODEL / f"{MODEL}_{DATA}.xlsx"
    pred.write_bytes(pred.read_bytes()[:100] if pred.exists() else b"PK\x03\x04")
    counters = tmp_path / "final.jsonl"
    finish(start(tmp_path, counters))
    if HOST.kind == "module":  # ms-vlmeval rereads its prediction file in the model folder; upstream's run.py
        # starts each run in a new eval-id folder, so a torn file of an earlier run is never read there
        assert (tmp_path / "outputs" / MODEL / f"{MODEL}_{DATA}.xlsx.torn").exists()
    counts = read_counter_file(str(counters))
    assert counts["policy_sequences"] == missing, (counts, seed)

    records = list(read_records(str(store_path(tmp_path))))
    sampled = collections.Counter((r.key, r.i) for r in records if r.kind == "candidate")
    scored = collections.Counter((r.key, r.i, r.prm, r.mode) for r in records if r.kind == "score")
    assert set(sampled.values()) == {1}, f"re-sampled: {[k for k, c in sampled.items() if c > 1]} (seed {seed})"
    assert set(scored.values()) == {1}, f"re-scored: {[k for k, c in scored.items() if c > 1]} (seed {seed})"
    after = index_records(records)
    assert set(after) == set(uninterrupted)  # nothing lost
    for key, entry in after.items():
        for i in range(N):
            assert entry.text(i) == uninterrupted[key].text(i), f"candidate {i} of {key} differs (seed {seed})"
            assert entry.score(i, SPEC) is not None
    check_whole(predictions(tmp_path / "outputs" / MODEL, MODEL), after, ROWS)
