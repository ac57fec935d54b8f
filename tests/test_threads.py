"""A local Best-of-N model under ``--api-mode`` (VLMEvalKit calls it from ``--api-nproc`` threads) stores the
same candidates with 8 threads as with 1: each candidate's seed comes from its sample and index, and seeded
sampling runs one sample at a time in a process (``bon.SEEDED_SAMPLING``), since the RNGs are process-global."""

import os
import subprocess

import pytest
from commands import vlmeval_run_command

from vlmeval_prm.constants import DEMO_ENV
from vlmeval_prm.datasets.mini_mcq import MINI_MCQ
from vlmeval_prm.store.jsonl import index_records, read_records
from vlmeval_prm.store.paths import store_file

pytestmark = pytest.mark.e2e
MODEL, N = "VLMEvalPRM-TinyPolicy-BoN4", 4
DATA, ROWS = MINI_MCQ, 36  # the whole set: --api-mode ignores --limit


def stored_candidates(work, nproc: int) -> dict:
    (work / "LMUData").mkdir(parents=True)
    env = {**os.environ, "LMUData": str(work / "LMUData"), DEMO_ENV: "1", "PYTHONUNBUFFERED": "1"}
    selection = ["--model", MODEL, "--data", DATA, "--api-mode", "--api-nproc", str(nproc)]
    proc = subprocess.run(
        vlmeval_run_command(selection, work / "outputs"),
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    samples = index_records(read_records(store_file(str(work / "outputs" / MODEL), MODEL, DATA)))
    return {(key, i): c.text for key, entry in samples.items() for i, c in entry.candidates.items()}


def test_api_nproc_8_stores_the_candidates_of_api_nproc_1(tiny_paths, tmp_path):
    one = stored_candidates(tmp_path / "one", 1)
    eight = stored_candidates(tmp_path / "eight", 8)
    assert len(one) == ROWS * N and all(one.values())
    assert len({text for text in one.values()}) > ROWS  # sampled: not one answer per question
    assert eight == one
