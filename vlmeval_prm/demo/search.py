"""``vlmeval-prm demo --search``: Best-of-N, beam search and DVTS on the demo task at the same budget, through
the host's run (one ``--config`` with three ``PRMSearch`` models), then one table: accuracy (VLMEvalKit's
own evaluation) against the compute each method spent per question, read from the search stores."""

from __future__ import annotations

import glob
import json
import os
import subprocess

import pandas as pd

from vlmeval_prm.store import search_log

#: (name tag, method, width): the three methods at one budget ``n`` (names ``<policy>-<tag><n>``).
METHODS = (("StepBoN", "best_of_n", 1), ("Beam2x", "beam", 2), ("DVTS2x", "dvts", 2))
COMPUTE = ("generated_tokens", "prompt_tokens", "policy_calls", "prm_sequences")


def config(policy: str, prm: str, data_entry: dict, n: int, iterations: int, max_step_tokens: int) -> dict:
    models = {
        f"{policy}-{tag}{n}": {
            "class": "PRMSearch",
            "model": policy,
            "method": method,
            "n": n,
            "width": width,
            "iterations": iterations,
            "max_step_tokens": max_step_tokens,
            "prm": prm,
        }
        for tag, method, width in METHODS
    }
    return {"model": models, "data": data_entry}


def accuracy(work_dir: str, model: str, data: str) -> float | None:
    """VLMEvalKit's Overall accuracy of the run (%), from its ``*_acc.csv``; None when it wrote none."""
    found = glob.glob(os.path.join(work_dir, model, "**", f"{model}_{data}_acc.csv"), recursive=True)
    if not found:
        return None
    table = pd.read_csv(found[0])
    return 100 * float(table["Overall"].iloc[0])


def compute_per_question(work_dir: str, model: str, data: str) -> dict[str, float]:
    """The mean compute per question of the latest result of each question in the search store."""
    found = glob.glob(os.path.join(work_dir, model, "**", f"{model}_{data}_search.jsonl"), recursive=True)
    latest = {}
    for line in search_log.read_lines(found[0]) if found else []:
        if line.get("kind") == "result":
            latest[line["key"]] = line["compute"]
    if not latest:
        return {k: float("nan") for k in ("questions", *COMPUTE)}
    return {"questions": len(latest), **{k: sum(c[k] for c in latest.values()) / len(latest) for k in COMPUTE}}


def run(command: list[str], work_dir: str, cfg: dict, env: dict, data: str) -> tuple[int, pd.DataFrame]:
    """Run the three searches; the table (rows: methods) of accuracy and compute per question."""
    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, "search_demo.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1)
    cmd = [*command, "--config", path, "--judge", "exact_matching", "--work-dir", work_dir]
    print("running:", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, env=env)
    rows = {
        model: {"accuracy": accuracy(work_dir, model, data), **compute_per_question(work_dir, model, data)}
        for model in cfg["model"]
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    table.to_csv(os.path.join(work_dir, "search_demo.csv"))
    return rc, table
