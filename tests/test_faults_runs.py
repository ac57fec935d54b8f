"""Faults around a real ``python -m vlmeval.run`` (ms-vlmeval): reruns after policy failures (D1), a
lone surrogate in a candidate (D2), and ``--api-mode`` runs in eval_id folders with ``--reuse``.

The policy is VLMEvalKit's GPT4V against an OpenAI-compatible stand-in server on localhost (the only
fake: the remote model); the PRM is the tiny local one.
"""

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from commands import MiniRows, vlmeval_run_command

from standins.openai_standin import SamplingStandin, _serving, gpt4v_bon_config, last_text
from vlmeval_prm.constants import COUNTERS_ENV, DEMO_ENV, SPEC_ENV
from vlmeval_prm.counters import read_counter_file
from vlmeval_prm.datasets.mini_mcq import MINI_MCQ
from vlmeval_prm.store.jsonl import index_records, read_records
from vlmeval_prm.store.paths import store_file
from vlmeval_prm.store.records import Summary

pytestmark = pytest.mark.e2e
N, ROWS = 2, 6
MINI = MiniRows(ROWS)
DATA = MINI.data
FAIL = "Failed to obtain answer"


class FlakyStandin(SamplingStandin):
    """Answers HTTP 500 to every question about triangles while ``broken`` (rows 0 and 2 of 6)."""

    broken = True

    def answer(self, payload, auth):
        if self.broken and "triangles" in last_text(payload):
            self.record(payload, auth)
            return 500, {"error": {"message": "the policy server is down", "type": "server_error"}}
        return super().answer(payload, auth)


class SurrogateStandin(SamplingStandin):
    """Choice 0 carries a lone surrogate: JSON's ``\\ud800`` escape, which decodes to one."""

    def reply(self, request, choice):
        return super().reply(request, choice) + (" \ud800 end" if choice == 0 else "")


def vlmeval_run(work, args, env=None):
    (work / "LMUData").mkdir(exist_ok=True)
    counters = work / "counters.jsonl"
    counters.unlink(missing_ok=True)
    env = {
        **os.environ,
        "LMUData": str(work / "LMUData"),
        COUNTERS_ENV: str(counters),
        SPEC_ENV: "transformers:tiny:prm",
        DEMO_ENV: "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    cwd = work / "cwd"  # not the work dir: the store must follow --work-dir, not the current folder
    cwd.mkdir(exist_ok=True)
    proc = subprocess.run(
        vlmeval_run_command(args, work / "outputs", "--api-nproc", "2"),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    return log, read_counter_file(str(counters))


def config_run(work, server, model="GPT4V-BoN2"):
    config = gpt4v_bon_config(model, N, server, "sk-standin", MINI.config())
    (work / "config.json").write_text(json.dumps(config))
    return vlmeval_run(work, ["--config", str(work / "config.json"), *MINI.args(work / "LMUData")])


def predictions(folder, model, data=DATA):
    table = pd.read_excel(folder / f"{model}_{data}.xlsx")
    assert "extra_records" in table, f"the extra_records column was dropped: {list(table.columns)}"
    return table


def check_whole(table, store, rows):
    """Every prediction is the text of the candidate its record chose; every row has its record."""
    assert len(table) == rows
    for text, raw in zip(table["prediction"], table["extra_records"]):
        summary = Summary.from_json(raw)
        assert summary is not None, f"row without its Best-of-N record: {raw!r}"
        assert not str(text).startswith(("{'prediction'", FAIL)), text
        assert text == store[summary.key].text(summary.chosen)


def test_rerun_after_policy_failures_keeps_answer_text_and_records(tmp_path):
    """D1: run 1 fails rows 0 and 2 (VLMEvalKit records FAIL); run 2 retries only them; VLMEvalKit
    reloads the other rows as text, and used to write the retried rows' dict as their prediction and
    drop extra_records. Run 3 (nothing to do) must keep them too."""
    folder = tmp_path / "outputs" / "GPT4V-BoN2"
    with _serving(FlakyStandin()) as server:
        config_run(tmp_path, server)
        first = predictions(folder, "GPT4V-BoN2")
        failed = [i for i, p in zip(first["index"], first["prediction"]) if str(p).startswith(FAIL)]
        assert failed == [0, 2]
        server.broken = False
        before = server.chat_calls
        config_run(tmp_path, server)
        assert server.chat_calls - before == len(failed)  # one n=N request per retried row, nothing else
        store = index_records(read_records(str(folder / f"GPT4V-BoN2_{DATA}_bon_candidates.jsonl")))
        check_whole(predictions(folder, "GPT4V-BoN2"), store, ROWS)
        before = server.chat_calls
        _, counts = config_run(tmp_path, server)
        assert server.chat_calls == before and counts["prm_sequences"] == 0
        check_whole(predictions(folder, "GPT4V-BoN2"), store, ROWS)


def test_a_lone_surrogate_is_stored_escaped_and_the_run_completes_and_resumes(tmp_path):
    """D2: it raised UnicodeEncodeError in the store append, so candidates were lost and every
    rerun crashed."""
    folder = tmp_path / "outputs" / "GPT4V-BoN2"
    path = folder / f"GPT4V-BoN2_{DATA}_bon_candidates.jsonl"
    with _serving(SurrogateStandin()) as server:
        config_run(tmp_path, server)
        raw = path.read_bytes()
        assert raw.count(b"\\ud800") == ROWS  # JSON's escape: the line is valid UTF-8
        store = index_records(read_records(str(path)))
        assert len(store) == ROWS and all(len(e.candidates) == N for e in store.values())
        assert sum(e.candidates[i].text.endswith(" \ud800 end") for e in store.values() for i in range(N)) == ROWS
        assert all(e.score(i, "transformers:tiny:prm").usable for e in store.values() for i in range(N))
        check_whole(predictions(folder, "GPT4V-BoN2"), store, ROWS)  # U+FFFD where the surrogate was
        calls = server.chat_calls
        os.remove(folder / f"GPT4V-BoN2_{DATA}.xlsx")  # the rerun must come from the store alone
        _, counts = config_run(tmp_path, server)
        assert server.chat_calls == calls and counts["prm_sequences"] == 0
        assert path.read_bytes() == raw
        check_whole(predictions(folder, "GPT4V-BoN2"), store, ROWS)


def test_api_mode_reuse_in_a_new_eval_id_folder_finds_the_store(tmp_path):
    """ms-vlmeval's --api-mode writes each run to <work_dir>/<model>/<eval_id>/ and --reuse copies only
    the prediction file into the new one: the store lives in <work_dir>/<model>/ so the rerun
    samples and scores nothing. The pipeline also wrote a row's record as its str() before."""
    model = "GPT4o-BoN2"
    with _serving(SamplingStandin()) as server:
        env = {"OPENAI_API_BASE": f"{server.url}/v1/chat/completions", "OPENAI_API_KEY": "sk-standin"}
        args = ["--model", model, "--data", MINI_MCQ, "--api-mode", "--reuse"]
        vlmeval_run(tmp_path, args, env)
        calls = server.chat_calls
        assert calls == 36
        time.sleep(1.1)  # eval_id has a one-second resolution
        _, counts = vlmeval_run(tmp_path, args, env)
        assert server.chat_calls == calls and counts["prm_sequences"] == 0
    folder = tmp_path / "outputs" / model
    runs = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("T"))
    assert len(runs) == 2
    store = index_records(read_records(store_file(str(folder), model, MINI_MCQ)))
    assert len(store) == 36 and not list(tmp_path.glob("cwd/outputs"))
    for run in runs:
        assert not list(run.glob("*_bon_candidates.jsonl"))
        check_whole(predictions(run, model, MINI_MCQ), store, 36)


@pytest.mark.parametrize(
    "folder,expected",
    [
        ("out/M/T20260101-120000", "out/M"),  # ms-vlmeval --api-mode
        ("out/M/T20260101_G1a2b3c4d", "out/M"),  # upstream run.py
        ("out/M", "out/M"),  # ms-vlmeval local mode
        ("out/Other/T20260101_G1a2b3c4d", "out/Other/T20260101_G1a2b3c4d"),  # not this model's run folder
        ("out/M/Tuesday", "out/M/Tuesday"),
    ],
)
def test_the_store_lives_in_the_model_folder(folder, expected):
    from vlmeval_prm.host.run_context import model_folder

    assert model_folder(folder, "M") == os.path.normpath(expected)


def test_store_path_during_an_upstream_run(monkeypatch):
    from vlmeval_prm.host import run_context

    monkeypatch.setattr(run_context, "CURRENT", {"work_dir": "w/M/T20260101_Gdeadbeef", "model_name": "M"})
    assert run_context.store_path("ignored", "D") == os.path.join("w", "M", "M_D_bon_candidates.jsonl")


UPSTREAM_DRIVER = """
import os, sys
from vlmeval.dataset import build_dataset
from vlmeval.inference import infer_data_job
from vlmeval.smp import get_pred_file_path, prepare_reuse_files

model_name, work_dir, eval_id, data, limit, reuse = sys.argv[1:7]
pred_root_meta = os.path.join(work_dir, model_name)
pred_root = os.path.join(pred_root_meta, eval_id)  # upstream run.py: <work_dir>/<model>/<eval_id>
os.makedirs(pred_root, exist_ok=True)
dataset = build_dataset(data)
result_file = get_pred_file_path(pred_root, model_name, data, use_env_format=True)
prepare_reuse_files(pred_root_meta=pred_root_meta, eval_id=eval_id, model_name=model_name, dataset_name=data,
                    dataset=dataset, result_file=result_file, reuse=reuse == "1", reuse_aux="all")
extra = {"limit": int(limit)} if limit != "0" else {}  # ms-vlmeval's infer_data_job takes a limit; upstream's not
infer_data_job(model_name, work_dir=pred_root, model_name=model_name, dataset=dataset, **extra)
"""


def test_upstream_run_layout_a_new_eval_id_folder_samples_nothing(tmp_path):
    """Upstream VLMEvalKit's run.py gives every run a folder <model>/T<date>_G<commit> and hands it to
    infer_data_job as work_dir (driven here through VLMEvalKit's own infer_data_job and
    prepare_reuse_files, as run.py calls them). A second run in a new folder, without --reuse (so no
    prediction file is copied over), must find the first one's store and sample and score nothing."""
    model = "VLMEvalPRM-TinyPolicy-BoN2"
    three = MiniRows(3)
    extra = three.args(tmp_path / "LMUData")
    data, limit = three.data, extra[1] if extra else "0"
    counters = tmp_path / "counters.jsonl"
    env = {**os.environ, "LMUData": str(tmp_path / "LMUData"), COUNTERS_ENV: str(counters), DEMO_ENV: "1"}
    for eval_id, reuse in (("T20260101_G0a1b2c3d", "1"), ("T20260102_G0a1b2c3d", "0")):
        counters.unlink(missing_ok=True)
        proc = subprocess.run(
            [sys.executable, "-c", UPSTREAM_DRIVER, model, str(tmp_path / "outputs"), eval_id, data, limit, reuse],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = read_counter_file(str(counters))
    assert counts["policy_sequences"] == 0 and counts["prm_sequences"] == 0, counts
    folder = tmp_path / "outputs" / model
    store = index_records(read_records(store_file(str(folder), model, data)))
    assert len(store) == 3
    check_whole(predictions(folder / "T20260102_G0a1b2c3d", model, data), store, 3)


def test_files_torn_by_a_kill_are_set_aside(tmp_path):
    """VLMEvalKit writes its prediction file and partial results in place; a kill mid-write leaves
    them unreadable and every later run would stop loading them. Only those are set aside."""
    from vlmeval.smp import dump

    from vlmeval_prm.host.run_context import set_aside_torn

    table = pd.DataFrame({"index": [0, 1], "prediction": ["a", "b"]})
    pred, prev, part = (tmp_path / "M_D.xlsx", tmp_path / "M_D_PREV.pkl", tmp_path / "01_D.pkl")
    dump(table, str(pred))
    dump({0: "a"}, str(prev))
    dump({0: "a", 1: "b"}, str(part))
    whole = part.read_bytes()
    pred.write_bytes(pred.read_bytes()[:200])
    prev.write_bytes(prev.read_bytes()[:5])
    assert sorted(set_aside_torn(str(tmp_path), "M", "D")) == sorted([str(pred), str(prev)])
    assert not pred.exists() and (tmp_path / "M_D.xlsx.torn").exists() and (tmp_path / "M_D_PREV.pkl.torn").exists()
    assert part.read_bytes() == whole
    assert set_aside_torn(str(tmp_path), "M", "D") == []
