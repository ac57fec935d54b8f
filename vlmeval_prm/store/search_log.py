"""The search store: every expansion of a PRM-guided search, appended as it is made, and each question's result.

``<model>_<dataset>_search.jsonl`` beside the Best-of-N candidate store. Lines: ``{"kind": "expansion", "key",
"prefix", "extensions": [{text, finished, tokens, prompt_tokens}]}`` and ``{"kind": "result", "key", "method",
"config", "best", "value", "compute", "finished"}``. A search killed mid-way resumes from its expansions (they
are replayed, not generated again); a line torn by the kill is skipped when read.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict

from vlmeval_prm.search.base import Expansion, Extension

_LOCK = threading.Lock()


def search_file(candidate_store: str) -> str:
    """The search store beside a candidate store (``..._bon_candidates.jsonl`` -> ``..._search.jsonl``)."""
    return candidate_store.removesuffix("_bon_candidates.jsonl") + "_search.jsonl"


def read_lines(path: str) -> list[dict]:
    """Every whole JSON line (a torn last line, from a kill, is skipped)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def expansions(lines: list[dict], key: str) -> list[Expansion]:
    return [
        Expansion(line["prefix"], tuple(Extension(**e) for e in line["extensions"]))
        for line in lines
        if line.get("kind") == "expansion" and line.get("key") == key
    ]


def append(path: str, record: dict) -> None:
    """One line, written and flushed at once (a kill loses at most the line being written)."""
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with _LOCK:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
            f.flush()


def expansion_record(key: str, expansion: Expansion) -> dict:
    return {
        "kind": "expansion",
        "key": key,
        "prefix": expansion.prefix,
        "extensions": [asdict(e) for e in expansion.extensions],
    }
