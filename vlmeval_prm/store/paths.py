"""Where a run's candidate store lives: one naming rule, used by the run, the demo and the report."""

from __future__ import annotations

import os
import re

#: A run folder ``<work_dir>/<model>/<eval_id>``: upstream run.py's ``T<date>_G<commit>`` and
#: ms-vlmeval's ``T<date>-<time>`` (``vlmeval/smp/file.py``: NEW_/LEGACY_EVAL_ID_PATTERN).
EVAL_ID = re.compile(r"^T\d{8}(?:-\d{6}|_G[0-9a-fA-F]+)$")


def store_file(folder: str, model_name: str, dataset: str | None) -> str:
    """``<folder>/<model>_<dataset>_bon_candidates.jsonl``."""
    return os.path.join(folder, f"{model_name}_{dataset or 'nodataset'}_bon_candidates.jsonl")
