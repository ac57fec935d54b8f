"""Best-of-N over VLMEvalKit's GPT4V through the real ``python -m vlmeval.run``, against an
OpenAI-compatible stand-in server on localhost (the only fake: the remote model), with the tiny PRM.

In ms-vlmeval 0.0.20 GPT4V has no ``use_custom_prompt``; BestOfN used to delegate to it and every
row failed with AttributeError while run.py exited 0. Both ways to name the model are covered: a
``--config`` BestOfN over ``{"class": "GPT4V", "api_base": ...}`` and the registered ``GPT4o-BoN4``
with ``OPENAI_API_BASE`` / ``OPENAI_API_KEY`` pointing GPT4V at the stand-in.
"""

import json
import os
import subprocess

import pandas as pd
import pytest
from commands import vlmeval_run_command

from standins.openai_standin import gpt4v_bon_config, serve_sampling
from vlmeval_prm.counters import read_counter_file
from vlmeval_prm.store.jsonl import index_records, read_records

pytestmark = pytest.mark.e2e
DATA, ROWS, N = "VLMEvalPRM_MiniMCQ", 36, 4
KEY = "sk-standin-secret-123"


def vlmeval_run(work, args, extra_env=None):
    (work / "LMUData").mkdir(exist_ok=True)
    counters = work / "counters.jsonl"
    env = {
        **os.environ,
        "LMUData": str(work / "LMUData"),
        "VLMEVAL_PRM_COUNTERS": str(counters),
        "VLMEVAL_PRM_SPEC": "transformers:tiny:prm",
        "VLMEVAL_PRM_DEMO": "1",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    cmd = vlmeval_run_command(args, work / "outputs", "--api-nproc", "4")
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr, read_counter_file(str(counters))


def check_run(work, model, server, counts, log):
    folder = work / "outputs" / model
    store = folder / f"{model}_{DATA}_bon_candidates.jsonl"
    assert store.exists(), log[-3000:]
    samples = index_records(read_records(str(store)))
    assert len(samples) == ROWS
    for entry in samples.values():
        texts = [entry.text(i) for i in range(N)]
        assert all(t and t.startswith("Step 1:") for t in texts)
        assert len(set(texts)) == N  # N distinct sampled candidates
        assert all(entry.score(i, "transformers:tiny:prm") is not None for i in range(N))
    pred_file = next(folder.glob(f"{model}_{DATA}.xlsx"), None) or next(folder.glob(f"{model}_{DATA}.tsv"))
    pred = pd.read_excel(pred_file) if str(pred_file).endswith("xlsx") else pd.read_csv(pred_file, sep="\t")
    assert len(pred) == ROWS and not pred["prediction"].astype(str).str.contains("Failed to obtain").any()
    # ONE chat request with n=N per question, sent with the sampling settings
    assert len(server.payloads) == ROWS == counts["policy_api_requests"]
    assert all(p["n"] == N and p["temperature"] == 0.7 and p["top_p"] == 0.95 for p in server.payloads)
    assert set(server.auth) == {f"Bearer {KEY}"}
    for path in folder.iterdir():  # the key never reaches an output file
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_config_best_of_n_over_gpt4v(tmp_path):
    with serve_sampling() as server:
        config = gpt4v_bon_config("GPT4V-BoN4", N, server, KEY, DATA)
        (tmp_path / "config.json").write_text(json.dumps(config))
        log, counts = vlmeval_run(tmp_path, ["--config", str(tmp_path / "config.json")])
        check_run(tmp_path, "GPT4V-BoN4", server, counts, log)


def test_registered_gpt4o_bon4_with_env_pointing_at_the_standin(tmp_path):
    with serve_sampling() as server:
        log, counts = vlmeval_run(
            tmp_path,
            ["--model", "GPT4o-BoN4", "--data", DATA],
            {"OPENAI_API_BASE": f"{server.url}/v1/chat/completions", "OPENAI_API_KEY": KEY},
        )
        check_run(tmp_path, "GPT4o-BoN4", server, counts, log)
        assert {p["model"] for p in server.payloads} == {"gpt-4o-2024-05-13"}  # VLMEvalKit's GPT4o entry
