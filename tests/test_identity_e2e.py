"""Stored work belongs to what produced it, through ``python -m vlmeval.run`` (ms-vlmeval) on CPU:
another ``prm_options.system_prompt`` rescores every candidate, another temperature samples every
candidate afresh, the same settings do neither, and the prediction rows name the scores and
candidates they were selected from."""

import json
import os
import subprocess

import pandas as pd
import pytest
from commands import MiniRows, vlmeval_run_command

from vlmeval_prm.constants import COUNTERS_ENV, DEMO_ENV
from vlmeval_prm.counters import read_counter_file
from vlmeval_prm.store.jsonl import index_records, read_records
from vlmeval_prm.store.paths import store_file
from vlmeval_prm.store.records import Summary

pytestmark = pytest.mark.e2e
N, ROWS, SPEC = 4, 4, "transformers:tiny:prm"
MINI = MiniRows(ROWS)
DATA = MINI.data
DEMO_MODEL, TINY_POLICY = "VLMEvalPRM-TinyPolicy-BoN4", "VLMEvalPRM-TinyPolicy"


def vlmeval_run(work, model, entry=None):
    """One run of ``model`` on ROWS rows: ``--model`` itself, or a ``--config`` with ``entry`` for it.
    The prediction files go first, so that VLMEvalKit asks for every row again."""
    folder = work / "outputs" / model
    for path in folder.glob(f"{model}_{DATA}*"):
        if not path.name.endswith("_bon_candidates.jsonl"):
            path.unlink()
    (work / "LMUData").mkdir(exist_ok=True)
    counters = work / "counters.jsonl"
    counters.unlink(missing_ok=True)
    if entry is None:
        selection = ["--model", model, "--data", DATA]
    else:
        config = {"model": {model: entry}, "data": MINI.config()}
        (work / "config.json").write_text(json.dumps(config))
        selection = ["--config", str(work / "config.json")]
    env = {
        **os.environ,
        "LMUData": str(work / "LMUData"),
        COUNTERS_ENV: str(counters),
        DEMO_ENV: "1",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.run(
        vlmeval_run_command([*selection, *MINI.args(work / "LMUData")], work / "outputs"),
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summaries = [Summary.from_json(x) for x in pd.read_excel(folder / f"{model}_{DATA}.xlsx")["extra_records"]]
    assert len(summaries) == ROWS and all(summaries)
    return out, read_counter_file(str(counters)), summaries


def test_another_system_prompt_rescores_every_candidate_and_the_same_none(tmp_path, tiny_paths):
    model = "TinyBoN"
    entry = {
        "class": "BestOfN",
        "model": {"class": "TransformersChat", "model_path": "tiny:policy", "max_new_tokens": 24},
        "n": N,
        "prm": SPEC,
    }
    _, counts, first = vlmeval_run(tmp_path, model, entry)
    assert counts["policy_sequences"] == counts["prm_sequences"] == ROWS * N
    out, counts, same = vlmeval_run(tmp_path, model, entry)
    assert counts["policy_sequences"] == counts["prm_sequences"] == 0 and "another scorer" not in out
    assert same == first
    out, counts, changed = vlmeval_run(tmp_path, model, {**entry, "prm_options": {"system_prompt": "Judge."}})
    assert counts["policy_sequences"] == 0 and counts["prm_sequences"] == ROWS * N
    assert out.count("were made by another scorer (changed: format.system_prompt)") == 1, out[-4000:]
    # every row names the scores it was selected with: those of its own run's scorer
    store = index_records(read_records(store_file(str(tmp_path / "outputs" / model), model, DATA)))
    for old, new in zip(first, changed):
        assert old.key == new.key and old.sampling == new.sampling and old.scorer != new.scorer
        for summary in (old, new):
            recs = [store[summary.key].score(i, SPEC, "step", summary.sampling, summary.scorer) for i in range(N)]
            assert [r.scorer for r in recs] == [summary.scorer] * N
            assert [r.response_score if r.usable else None for r in recs] == summary.scores


def test_the_tiny_demo_with_another_temperature_samples_afresh_and_the_same_none(tmp_path, tiny_paths):
    """Issue 24: the demo name rerun at temperature 1.5 reused every temperature-0.7 candidate."""
    _, counts, first = vlmeval_run(tmp_path, DEMO_MODEL)
    assert counts["policy_sequences"] == ROWS * N
    hot = {"class": "BestOfN", "model": TINY_POLICY, "n": N, "prm": SPEC, "temperature": 1.5}
    out, counts, warm = vlmeval_run(tmp_path, DEMO_MODEL, hot)
    assert counts["policy_sequences"] == counts["prm_sequences"] == ROWS * N
    assert out.count("were sampled with other settings") == 1, out[-4000:]
    assert all(a.sampling != b.sampling for a, b in zip(first, warm))
    out, counts, again = vlmeval_run(tmp_path, DEMO_MODEL, hot)
    assert counts["policy_sequences"] == counts["prm_sequences"] == 0 and "other settings" not in out
    assert again == warm
