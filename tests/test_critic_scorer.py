"""``critic:<model>``: a VLMEvalKit model judging each step, as a Best-of-N scorer. The judge is VLMEvalKit's own
GPT4V class pointed at a local OpenAI-compatible stand-in (tests/standins/openai_standin.py: no API can be
reached here); its replies are scripted from the critic prompt it is sent."""

import json
import os
import re
import subprocess

import pytest

from standins.openai_standin import serve_scripted
from vlmeval_prm.prm import build_scorer, scorer_identity, validate_spec

SECRET = "sk-critic-secret-123"


def verdicts(prompt: str, bad: int | None = None) -> str:
    """One ``Step i: +`` line per step of the critic prompt, ``-`` for step ``bad``."""
    n = int(re.search(r"### Solution \((\d+) steps\)", prompt).group(1))
    return "\n".join(f"Step {i}: {'-' if i == bad else '+'}" for i in range(1, n + 1))


def judge_config(url: str) -> dict:
    return {
        "class": "GPT4V",
        "model": "gpt-4o-mini",
        "api_base": f"{url}/v1/chat/completions",
        "key": SECRET,
        "retry": 1,
        "verbose": False,
    }


def test_verdicts_become_step_scores_and_unreadable_replies_failures():
    def reply(prompt, payload):  # the candidates are judged at once: answer by what is judged
        return "**Step 1:** correct\nStep 2: -" if "Step 1:\na" in prompt else "The solution looks fine to me."

    with serve_scripted(reply) as server:
        scorer = build_scorer("critic:judge", model=judge_config(server.url))
        good, unreadable = scorer.score("Q?", [], [["a", "b"], ["c", "d"]])
        assert server.chat_calls == 2
        sent = [p["messages"][-1]["content"] for p in server.payloads]
    assert good.ok and good.scores == [1.0, 0.0]
    assert unreadable.scores is None and not unreadable.transient
    assert "no verdict for every one of 2 steps: 'The solution looks fine to me.'" in unreadable.error
    assert "### Solution (2 steps)" in json.dumps(sent)  # VisualProcessBench's critic prompt


def test_a_failed_request_is_a_transient_failure_never_a_score():
    with serve_scripted(lambda prompt, payload: None) as server:  # HTTP 500 every time
        scorer = build_scorer("critic:judge", model=judge_config(server.url))
        (res,) = scorer.score("Q?", [], [["a", "b"]])
    assert res.scores is None and res.transient and "request failed" in res.error


def test_identity_names_the_judge_and_prompt_without_the_key():
    ident = scorer_identity("critic:judge", {"model": judge_config("http://127.0.0.1:9")})
    assert ident["backend"] == "critic" and ident["config"]["model"] == "gpt-4o-mini"
    assert SECRET not in json.dumps(ident) and "key" not in ident["config"]
    assert ident != scorer_identity("critic:GPT4o")


def test_bad_judges_are_refused_before_any_work():
    with pytest.raises(ValueError, match=r"no VLMEvalKit model 'GPT4oo' \(did you mean 'GPT4o'\?\)"):
        validate_spec("critic:GPT4oo")
    with pytest.raises(ValueError, match='"class" is in vlmeval.vlm or vlmeval.api'):
        validate_spec("critic:judge", {"model": {"class": "NoSuchAPI"}})
    with pytest.raises(ValueError, match="takes no option 'format'"):
        validate_spec("critic:GPT4o", {"format": "vl-prm"})


@pytest.mark.e2e
def test_best_of_4_scored_by_a_critic_through_vlmeval_run(tmp_path, tiny_paths):
    """``vlmeval.run --model VLMEvalPRM-TinyPolicy-BoN4`` with ``VLMEVAL_PRM_SPEC=critic:GPT4o`` (VLMEvalKit's GPT4o
    entry, sent to the stand-in by ``OPENAI_API_BASE``): every candidate is judged once; the store holds the
    critic's per-step scores, and each reply the stand-in made unreadable is a recorded failure."""
    from commands import MiniRows, vlmeval_run_command

    from vlmeval_prm.constants import DEMO_ENV, SPEC_ENV
    from vlmeval_prm.store.jsonl import index_records, read_records
    from vlmeval_prm.store.paths import store_file

    rows, name, spec = MiniRows(3), "VLMEvalPRM-TinyPolicy-BoN4", "critic:GPT4o"
    sent = []

    def reply(prompt, payload):
        sent.append(prompt)
        return "I cannot tell." if len(sent) % 4 == 0 else verdicts(prompt, bad=2)

    with serve_scripted(reply) as server:
        env = {
            **os.environ,
            "LMUData": str(tmp_path / "LMUData"),
            DEMO_ENV: "1",
            SPEC_ENV: spec,
            "OPENAI_API_BASE": f"{server.url}/v1/chat/completions",
            "OPENAI_API_KEY": SECRET,
        }
        args = ["--model", name, "--data", rows.data, *rows.args(tmp_path / "LMUData")]
        proc = subprocess.run(
            vlmeval_run_command(args, tmp_path / "outputs"),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = tmp_path / "outputs" / name
    store = index_records(read_records(store_file(str(folder), name, rows.data)))
    scored = [entry.score(i, spec) for entry in store.values() for i in range(4)]
    assert len(store) == rows.rows and len(sent) == len(scored) == 4 * rows.rows
    usable = [r for r in scored if r.usable]
    failures = [r for r in scored if not r.usable]
    assert len(failures) == len(sent) // 4 and all("no verdict" in r.error for r in failures)
    assert all(r.step_scores == [0.0 if k == 1 else 1.0 for k in range(len(r.steps))] for r in usable)
    written = "".join(p.read_text(errors="ignore") for p in folder.rglob("*") if p.is_file() and p.suffix != ".xlsx")
    assert SECRET not in written + proc.stdout + proc.stderr
