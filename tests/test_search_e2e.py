"""PRM-guided search through ``python -m vlmeval.run`` (or a checkout's run.py): ``PRMSearch`` over the tiny demo
policy (``TransformersChat``, continued from each prefix by ``policy.step_extension``) scored by the tiny PRM;
killed with SIGKILL mid-search and resumed: nothing stored is generated again, and the predictions are an
uninterrupted run's."""

import json
import os
import signal
import subprocess
import time
from collections import Counter

import pandas as pd
import pytest
from commands import MiniRows, one_output, vlmeval_run_command

from vlmeval_prm.constants import DEMO_ENV

pytestmark = pytest.mark.e2e
ROWS = MiniRows(2)


def served(url: str) -> dict:
    """VLMEvalKit's GPT4V pointed at a vLLM stand-in that continues partial answers."""
    api_base = f"{url}/v1/chat/completions"
    return {
        "class": "GPT4V",
        "model": "standin-policy",
        "key": "sk-x",
        "retry": 1,
        "verbose": False,
        "api_base": api_base,
    }


def launch(work, method: str, model: str | dict = "VLMEvalPRM-TinyPolicy") -> subprocess.Popen:
    entry = {
        "class": "PRMSearch",
        "model": model,
        "method": method,
        "n": 4,
        "width": 2,
        "iterations": 3,
        "max_step_tokens": 12,
        "prm": "transformers:tiny:prm",
    }
    (work / "config.json").write_text(json.dumps({"model": {"Search": entry}, "data": ROWS.config()}))
    env = {**os.environ, "LMUData": str(work / "LMUData"), DEMO_ENV: "1"}
    args = ["--config", str(work / "config.json"), *ROWS.args(work / "LMUData")]
    return subprocess.Popen(
        vlmeval_run_command(args, work / "outputs"),
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def search_lines(work) -> list[dict]:
    files = list((work / "outputs" / "Search").glob("*_search.jsonl"))
    if not files:
        return []
    lines = []
    for raw in files[0].read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:  # the line the kill tore
            pass
    return lines


def predictions(work) -> list[str]:
    path = one_output(work / "outputs" / "Search", f"Search_{ROWS.data}.xlsx")
    return pd.read_excel(path).sort_values("index")["prediction"].astype(str).tolist()


@pytest.mark.parametrize("method, policy", [("beam", "local"), ("dvts", "local"), ("beam", "served")])
def test_a_killed_search_resumes_without_generating_again(tmp_path, tiny_paths, method, policy):
    from standins.openai_standin import serve_continuation

    with serve_continuation(delay=0.5) as server:
        check_resume(tmp_path, method, served(server.url) if policy == "served" else "VLMEvalPRM-TinyPolicy")


def check_resume(tmp_path, method: str, model) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()
    proc = launch(whole, method, model)
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-3000:]

    proc = launch(killed, method, model)
    deadline = time.monotonic() + 600
    while sum(line["kind"] == "expansion" for line in search_lines(killed)) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "the search ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [line for line in search_lines(killed) if line["kind"] == "expansion"]
    proc = launch(killed, method, model)
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-3000:]

    lines = search_lines(killed)
    expansions = [(line["key"], line["prefix"]) for line in lines if line["kind"] == "expansion"]
    assert not [k for k, count in Counter(expansions).items() if count > 1]  # no prefix generated twice
    assert set(expansions) >= {(line["key"], line["prefix"]) for line in before}
    results = [line for line in lines if line["kind"] == "result"]
    assert {r["key"] for r in results} == {line["key"] for line in lines if line["kind"] == "expansion"}
    assert any(r["replayed"] > 0 for r in results)  # the resumed question replayed what it had stored
    assert all(r["compute"]["generated_tokens"] >= 0 and r["compute"]["prm_sequences"] > 0 for r in results)
    assert predictions(killed) == predictions(whole)


@pytest.mark.parametrize("method", ["beam", "dvts"])
def test_search_on_a_served_policy_counts_what_the_server_saw(tmp_path, tiny_paths, method):
    """``PRMSearch`` over VLMEvalKit's GPT4V pointed at a vLLM stand-in (tests/standins/openai_standin.py: no vLLM
    here) that continues each partial answer (``continue_final_message``): the run's stored compute is the
    server's own token count, and every request carried the extension."""
    from standins.openai_standin import serve_continuation

    with serve_continuation() as server:
        proc = launch(tmp_path, method, served(server.url))
        out = proc.communicate(timeout=900)[0]
        assert proc.returncode == 0, out[-3000:]
        assert server.payloads and all(p["continue_final_message"] and p["stop"] == ["\n\n"] for p in server.payloads)
    results = [line for line in search_lines(tmp_path) if line["kind"] == "result"]
    assert len(results) == ROWS.rows and all(r["best"] and r["finished"] for r in results)
    assert sum(r["compute"]["generated_tokens"] for r in results) == server.completion_tokens > 0
    assert sum(r["compute"]["prompt_tokens"] for r in results) == server.prompt_tokens
    assert sum(r["compute"]["policy_calls"] for r in results) <= len(server.payloads)
    assert all(p.startswith("Step 1:") and "So the answer is" in p for p in predictions(tmp_path))
