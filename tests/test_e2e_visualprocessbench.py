"""VisualProcessBench end to end through the real ``python -m vlmeval.run`` on the fixture release:
the tiny PRM (per-step P(+)) and the tiny policy as an MLLM critic (unparseable replies counted)."""

import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from commands import vlmeval_run_command

from vlmeval_prm.constants import DEMO_ENV

pytestmark = pytest.mark.e2e
RELEASE = Path(__file__).parent / "fixtures" / "visualprocessbench"
DATA = "VisualProcessBench"


def run(tmp_path, model):
    (tmp_path / "LMUData").mkdir(exist_ok=True)
    env = {**os.environ, "LMUData": str(tmp_path / "LMUData"), "VISUALPROCESSBENCH_ROOT": str(RELEASE), DEMO_ENV: "1"}
    env.pop("VLMEVAL_PRM_SPEC", None)
    out = subprocess.run(
        vlmeval_run_command(["--model", model, "--data", DATA], tmp_path / "outputs", judge=None),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    folder = tmp_path / "outputs" / model
    preds = list(folder.glob(f"{model}_{DATA}.xlsx")) + list(folder.glob(f"{model}_{DATA}.tsv"))
    metrics = list(folder.glob(f"{model}_{DATA}_metrics.*"))
    assert preds and metrics, (sorted(p.name for p in folder.iterdir()), out.stdout[-3000:] + out.stderr[-3000:])
    return _read(preds[0]), _read(metrics[0])


def _read(p):
    return pd.read_excel(p) if p.suffix == ".xlsx" else pd.read_csv(p, sep="\t" if p.suffix == ".tsv" else ",")


def test_tiny_prm_scores_every_given_step(tmp_path, tiny_paths):
    import json

    pred, metrics = run(tmp_path, "VLMEvalPRM-TinyPRM")
    for steps, p in zip(pred["steps"], pred["prediction"]):
        scores = json.loads(p)
        assert len(scores) == len(json.loads(steps)) and all(0 <= s <= 1 for s in scores)
    overall = metrics[metrics.iloc[:, 0].astype(str).str.contains("Overall")]
    assert len(overall) == 1 and overall["failed"].iloc[0] == 0


def test_tiny_policy_as_critic_reports_unparseable_replies(tmp_path, tiny_paths):
    pred, metrics = run(tmp_path, "VLMEvalPRM-TinyPolicy")
    overall = metrics[metrics.iloc[:, 0].astype(str).str.contains("Overall")]
    # random weights never follow the verdict format: every reply is counted as unparseable, none guessed
    assert overall["failed"].iloc[0] == len(pred)
