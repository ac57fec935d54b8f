"""Where a run's candidate store lives: one naming rule, used by the run, the demo and the report."""

from __future__ import annotations

import os


def store_file(folder: str, model_name: str, dataset: str | None) -> str:
    """``<folder>/<model>_<dataset>_bon_candidates.jsonl``."""
    return os.path.join(folder, f"{model_name}_{dataset or 'nodataset'}_bon_candidates.jsonl")
