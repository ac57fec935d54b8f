"""The real OpenCompass 0.5.4, in its own virtual environment, runs the shipped eval config
(plugins/opencompass) against ``vlmeval-prm serve --demo``, offline.

OpenCompass's pins clash with VLMEvalKit's, so ``plugins/opencompass/install.sh`` builds
``.venv-opencompass`` (git-ignored) once; later runs reuse it. VisualProcessBench uses the 8-sample
fake release in tests/fixtures; nothing is faked on OpenCompass's side.
"""

import glob
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from test_serve import KEY, MODEL, N, start_server, stop, wait_ready

from vlmeval_prm.store.jsonl import index_records, read_records

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-opencompass"
CONFIG = REPO / "plugins" / "opencompass" / "eval_vlmeval_prm_bon.py"
VPB_RELEASE = REPO / "tests" / "fixtures" / "visualprocessbench"
VPB_SAMPLES = 8


@pytest.fixture(scope="session")
def oc_venv():
    """OpenCompass's environment: built by the shipped script (minutes, once), then reused."""
    proc = subprocess.run(
        ["bash", str(REPO / "plugins" / "opencompass" / "install.sh"), str(VENV)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return VENV


def oc_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "OPENAI_API_KEY")}
    return {
        **env,
        "PATH": f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "LMUData": str(tmp_path / "LMUData"),
        "VISUALPROCESSBENCH_ROOT": str(VPB_RELEASE),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        **extra,
    }


UNITS_SCRIPT = r"""
import json, sys
from opencompass.datasets import VLMEvalKitDataset
from opencompass.evaluator import VLMEvalKitEvaluator
from vlmeval_prm.host.opencompass_eval import AsReportedVLMEvalKitEvaluator

test_set = VLMEvalKitDataset.load(dataset_name="VisualProcessBench")
preds = []
for row, raw in enumerate(test_set["raw_sample"]):
    labels = json.loads(json.loads(raw)["labels"])
    # right on even rows, "all correct" on odd rows: an F1 strictly between 0 and 100
    verdicts = ["+" if (lab >= 0 or row % 2) else "-" for lab in labels]
    preds.append("\n".join(f"Step {k}: {v}" for k, v in enumerate(verdicts, 1)))
out = {}
for name, cls in (("ours", AsReportedVLMEvalKitEvaluator), ("stock", VLMEvalKitEvaluator)):
    ev = cls(dataset_name="VisualProcessBench")
    ev._out_dir = f"{sys.argv[1]}/{name}"
    out[name] = ev.score(preds, test_set)
print("METRICS=" + json.dumps(out))
"""


def test_bridge_reports_visualprocessbench_in_the_datasets_own_units(oc_venv, tmp_path):
    """Through OpenCompass's bridge, the shipped evaluator gives the F1 and counts VisualProcessBench
    itself reports; the stock evaluator would report them x100."""
    proc = subprocess.run(
        [str(oc_venv / "bin" / "python"), "-c", UNITS_SCRIPT, str(tmp_path)],
        cwd=tmp_path,
        env=oc_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads(proc.stdout.rsplit("METRICS=", 1)[1])
    own = pd.read_csv(tmp_path / "ours" / "VisualProcessBench_metrics.csv").set_index("data_source")
    f1 = metrics["ours"]["data_source=Overall|F1"]
    assert 0 < f1 < 100 and f1 == pytest.approx(own.at["Overall", "F1"])
    assert metrics["ours"]["data_source=Overall|samples"] == VPB_SAMPLES
    assert metrics["stock"]["data_source=Overall|F1"] == pytest.approx(100 * f1)
    assert metrics["stock"]["data_source=Overall|samples"] == 100 * VPB_SAMPLES


def summary_rows(work: Path) -> pd.DataFrame:
    (csv,) = glob.glob(str(work / "*" / "summary" / "summary_*.csv"))
    return pd.read_csv(csv)


def test_opencompass_runs_the_shipped_config_against_the_served_demo(oc_venv, tmp_path, tiny_paths):
    store = tmp_path / "store"
    server, url = start_server(tmp_path, "--demo", "--store-dir", str(store), env={"VLMEVAL_PRM_API_KEY": KEY})
    try:
        wait_ready(server, url, tmp_path / "server.log")
        work = tmp_path / "oc_outputs"
        env = oc_env(
            tmp_path, VLMEVAL_PRM_SERVE_URL=f"{url}/v1", OPENAI_API_KEY=KEY, VLMEVAL_PRM_TOKENIZER=tiny_paths["policy"]
        )  # offline: no tiktoken download
        proc = subprocess.run(
            [str(oc_venv / "bin" / "opencompass"), str(CONFIG), "-w", str(work)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    finally:
        stop(server)

    rows = summary_rows(work)
    value = {(r.dataset, r.metric): r[MODEL] for _, r in rows.iterrows()}
    (results,) = glob.glob(str(work / "*" / "results" / MODEL))
    # MCQ accuracy: VLMEvalKit's fraction, in percent
    acc = pd.read_csv(Path(results) / "VLMEvalPRM_MiniMCQ" / "VLMEvalPRM_MiniMCQ_acc.csv")
    assert float(value[("VLMEvalPRM_MiniMCQ", "split=none|Overall")]) == pytest.approx(
        100 * acc.at[0, "Overall"], abs=0.01
    )
    # VisualProcessBench: exactly the numbers the dataset reported (counts stay counts)
    own = pd.read_csv(Path(results) / "VisualProcessBench" / "VisualProcessBench_metrics.csv")
    for _, r in own.iterrows():
        for col in ("samples", "failed", "steps", "F1", "F1_pessimistic"):
            if pd.notna(r[col]):
                assert float(value[("VisualProcessBench", f"data_source={r.data_source}|{col}")]) == pytest.approx(
                    r[col], abs=0.01
                )
    assert float(value[("VisualProcessBench", "data_source=Overall|samples")]) == VPB_SAMPLES

    # every answer OpenCompass recorded is a candidate the server chose, and all candidates are stored
    entries = index_records(read_records(str(store / f"{MODEL}_nodataset_bon_candidates.jsonl")))
    mcq = pd.read_csv(REPO / "vlmeval_prm" / "data" / "VLMEvalPRM_MiniMCQ.tsv", sep="\t").drop(columns="index")
    assert len(entries) == len(mcq.drop_duplicates()) + VPB_SAMPLES  # identical rows share their candidates
    assert all(sorted(e.candidates) == list(range(N)) for e in entries.values())
    texts = {e.text(i) for e in entries.values() for i in range(N)}
    for pred_file in glob.glob(str(work / "*" / "predictions" / MODEL / "*.json")):
        predictions = [p["prediction"] for p in json.load(open(pred_file)).values()]
        assert predictions and set(predictions) <= texts, pred_file
    # the API key went through the environment only
    for path in work.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".json", ".txt", ".out", ".csv", ".md"):
            assert KEY not in path.read_text(errors="ignore"), path
