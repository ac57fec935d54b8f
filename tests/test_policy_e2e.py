"""Best-of-N over VLMEvalKit's own local wrapper classes with tiny random-weight checkpoints of
HF-native architectures (built offline, ``standins.tiny_vlms``), through the real
``python -m vlmeval.run --config``, with the tiny PRM.

Faked: only the GPU. The wrappers hard-code CUDA (``.cuda()``, ``.to("cuda")``, flash-attention,
an ``nvidia-smi`` memory check); ``standins/cpu_site`` (first on PYTHONPATH and PATH of the
subprocess) keeps that placement on the CPU. Asserted: N distinct candidates per question, and the
number of engine calls (``VLMEVAL_PRM_COUNTERS``): ONE generate call per question for the batched
families, N for the generic route.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
from commands import vlmeval_run_command

from standins.tiny_vlms import tiny_vlm
from vlmeval_prm.counters import read_counter_file
from vlmeval_prm.store.jsonl import index_records, read_records

pytestmark = pytest.mark.e2e
DATA, ROWS = "VLMEvalPRM_MiniMCQ", 36
CPU_SITE = Path(__file__).parent / "standins" / "cpu_site"


def run_config(work: Path, models: dict) -> tuple[str, dict]:
    (work / "LMUData").mkdir(exist_ok=True)
    config = {"model": models, "data": {DATA: {"class": "VLMEvalPRMMiniMCQ", "dataset": DATA}}}
    (work / "config.json").write_text(json.dumps(config))
    counters = work / "counters.jsonl"
    env = {
        **os.environ,
        "LMUData": str(work / "LMUData"),
        "VLMEVAL_PRM_COUNTERS": str(counters),
        "VLMEVAL_PRM_SPEC": "transformers:tiny:prm",
        "VLMEVAL_PRM_DEMO": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(CPU_SITE), os.environ.get("PYTHONPATH", "")]),
        "PATH": os.pathsep.join([str(CPU_SITE), os.environ["PATH"]]),
    }
    cmd = vlmeval_run_command(["--config", str(work / "config.json")], work / "outputs")
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log, read_counter_file(str(counters))


def candidates(work: Path, name: str, n: int, log: str) -> dict:
    store = work / "outputs" / name / f"{name}_{DATA}_bon_candidates.jsonl"
    assert store.exists(), log[-4000:]  # run.py exits 0 even when every row failed
    samples = index_records(read_records(str(store)))
    assert len(samples) == ROWS
    for entry in samples.values():
        texts = [entry.text(i) for i in range(n)]
        assert all(texts), [entry.candidates[i].error for i in range(n) if not texts[i]]
        assert len(set(texts)) == n  # N distinct candidates
        assert all(entry.score(i, "transformers:tiny:prm") is not None for i in range(n))
    return samples


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_vlms")


def test_qwen2vl_best_of_8_is_one_generate_call_per_question(tmp_path, tiny_cache, tiny_paths):
    """The issue's "done when": BestOfN n=8 over VLMEvalKit's Qwen2VLChat, one generate call per question."""
    path = tiny_vlm("qwen2_vl", tiny_cache)
    models = {
        "Qwen2VL-BoN8": {
            "class": "BestOfN",
            "n": 8,
            "model": {
                "class": "Qwen2VLChat",
                "model_path": path,
                "min_pixels": 3136,
                "max_pixels": 3136,
                "max_new_tokens": 12,
            },
        }
    }
    log, counts = run_config(tmp_path, models)
    samples = candidates(tmp_path, "Qwen2VL-BoN8", 8, log)
    assert counts["policy_generate_calls:Qwen2VLChat"] == ROWS == len(samples)
    assert counts["policy_sequences:Qwen2VLChat"] == ROWS * 8
    for entry in samples.values():  # sampled with the requested settings, not VLMEvalKit's top_k=1
        assert all(entry.candidates[i].settings["temperature"] == 0.7 for i in range(8))


#: VLMEvalKit class -> (tiny checkpoint, extra wrapper kwargs). All five are batched families.
MORE_CLASSES = {
    "LLaVA_OneVision_HF": ("llava_onevision", {}),
    "Qwen3VLChat": ("qwen3_vl", {"min_pixels": 4096, "max_pixels": 4096}),
    "PaliGemma": ("paligemma", {}),
    "Gemma3": ("gemma3", {}),
    "LFM2VL": ("lfm2_vl", {}),
}


def test_five_more_classes_batched_through_one_vlmeval_run(tmp_path, tiny_cache, tiny_paths):
    import transformers

    n = 3
    classes = dict(MORE_CLASSES)
    if transformers.__version__.startswith("4."):
        # Stand-ins built for 5.x that 4.57 cannot build (the classes themselves are not in question): the
        # tiny PaliGemma carries the tests' Qwen2 BPE tokenizer, and 4.57's PaliGemmaProcessor accepts only
        # a Gemma tokenizer class; the tiny LFM2-VL uses Lfm2VlImageProcessor, which 4.57 does not have.
        del classes["PaliGemma"], classes["LFM2VL"]
    models = {
        f"{cls}-BoN{n}": {
            "class": "BestOfN",
            "n": n,
            "max_new_tokens": 12,
            "model": {"class": cls, "model_path": tiny_vlm(kind, tiny_cache), **extra},
        }
        for cls, (kind, extra) in classes.items()
    }
    log, counts = run_config(tmp_path, models)
    for cls in classes:
        candidates(tmp_path, f"{cls}-BoN{n}", n, log)
        assert counts[f"policy_generate_calls:{cls}"] == ROWS, (cls, counts)  # one call per question
        assert counts[f"policy_sequences:{cls}"] == ROWS * n, cls
