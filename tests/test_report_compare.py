"""``vlmeval-prm report --compare``: one sampling run (tiny policy, Best-of-4 through ``vlmeval.run``, scored by the
tiny PRM) scored again by a critic judge (VLMEvalKit's GPT4V pointed at a local OpenAI-compatible stand-in: no
API is reachable here); a table per scorer, the comparison, the plots, and the critic's numbers recomputed by
brute force from the store."""

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from standins.openai_standin import serve_scripted

pytestmark = pytest.mark.e2e
N, SPEC = 4, "transformers:tiny:prm"
CLI = os.path.join(os.path.dirname(sys.executable), "vlmeval-prm")


def judge_reply(prompt: str, payload: dict) -> str:
    """Deterministic verdicts that differ between candidates: a step is '-' when a hash of the solution says so."""
    n = int(re.search(r"### Solution \((\d+) steps\)", prompt).group(1))
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    return "\n".join(f"Step {i}: {'-' if (h >> i) & 1 else '+'}" for i in range(1, n + 1))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_paths):
    from commands import MiniRows, run_tiny_bon

    work = tmp_path_factory.mktemp("compare")
    rows = MiniRows(6)
    run_tiny_bon(work, "Tiny-BoN4", SPEC, {}, rows, n=N)
    return work, rows


def report(work, rows, server, *extra):
    critic = {
        "critic:judge": {
            "model": {
                "class": "GPT4V",
                "model": "judge-model",
                "api_base": f"{server.url}/v1/chat/completions",
                "key": "sk-compare-secret",
                "retry": 1,
                "verbose": False,
            }
        }
    }
    cmd = [
        CLI,
        "report",
        "--work-dir",
        str(work / "outputs"),
        "--model",
        "Tiny-BoN4",
        "--data",
        rows.data,
        "--compare",
        SPEC,
        "critic:judge",
        "--compare-options",
        json.dumps(critic),
        "--benchmark",
        f"{SPEC}=55",
        "--benchmark",
        "critic:judge=60",
        *extra,
    ]
    env = {**os.environ, "LMUData": str(work / "LMUData"), "VLMEVAL_PRM_DEMO": "1"}
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)


def test_two_scorers_on_one_sampling_run(run_dir):
    work, rows = run_dir
    with serve_scripted(judge_reply) as server:
        first = report(work, rows, server)
        asked = server.chat_calls
        second = report(work, rows, server)
        asked_again = server.chat_calls - asked
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    # the run's own scorer is already scored: nothing new; the critic judges every candidate once
    assert f"{SPEC}: scored 0 stored candidates now" in out
    assert f"critic:judge: scored {N * rows.rows} stored candidates now" in out and asked == N * rows.rows
    assert out.count("--- scorer ") == 3 and "--- scorer critic:judge ---" in out
    assert "reward benchmark vs Best-of-4 gain over 2 scorers: Pearson r = " in out
    folder = work / "outputs" / "Tiny-BoN4"
    for name in ("_bon_compare.csv", "_bon_compare_compare.png", "_bon_compare_benchmark_vs_gain.png"):
        assert (folder / f"Tiny-BoN4_{rows.data}{name}").stat().st_size > 0
    # a second report scores nothing and asks the judge nothing
    assert second.returncode == 0 and asked_again == 0
    assert "critic:judge: scored 0 stored candidates now" in second.stdout
    assert "sk-compare-secret" not in out + first.stderr + "".join(
        p.read_text(errors="ignore") for p in folder.rglob("*") if p.suffix in (".jsonl", ".csv")
    )


def test_the_critics_table_is_its_stored_scores(run_dir, monkeypatch):
    """BoN@N of prm_mean for the critic, recomputed by hand: per question, the mean correctness of the
    candidates whose mean critic score is highest (ties shared), averaged."""
    import pandas as pd

    from vlmeval_prm.report.collect import collect_run, samples_for
    from vlmeval_prm.store.jsonl import index_records, read_records

    work, rows = run_dir
    monkeypatch.setenv("LMUData", str(work / "LMUData"))
    monkeypatch.setenv("VLMEVAL_PRM_DEMO", "1")
    folder = work / "outputs" / "Tiny-BoN4"
    table = pd.read_csv(folder / f"Tiny-BoN4_{rows.data}_bon_compare_scorer2_bon.csv", index_col=0)
    run = collect_run(str(work / "outputs"), "Tiny-BoN4", rows.data)
    store = index_records(read_records(run.store_path))
    digests = {r.scorer for e in store.values() for r in e.scores.values() if r.prm == "critic:judge"}
    assert len(digests) == 1
    samples = samples_for(run, store, "critic:judge", digests.pop())
    hits = []
    for sample in samples:
        scored = [c for c in sample.candidates if c.step_scores and c.correct is not None]
        if not scored:
            continue
        means = [sum(c.step_scores) / len(c.step_scores) for c in scored]
        best = [c for c, m in zip(scored, means) if m == max(means)]
        hits.append(sum(c.correct for c in best) / len(best))
    assert table.loc["prm_mean", str(N)] == pytest.approx(100 * sum(hits) / len(hits), abs=1e-6)
    verdicts = {v for s in samples for c in s.candidates for v in c.step_scores or []}
    assert verdicts == {0.0, 1.0}  # a critic's step scores are its verdicts
