"""The judge's verdicts on disk, beside the candidate store, so each answer is judged once.

``<pred_root>/<model>_<dataset>_bon_judge.jsonl``: one JSON line per judged item, keyed by a hash of
(benchmark, judge settings that change verdicts, VLMEvalKit's version, the question row, the
candidate's text). The value is what VLMEvalKit's per-row function returned (its extraction, log,
hit...) and the verdict of VLMEvalKit's check on it (``correct``). The last line for a key wins; a
failed judgement is stored too (``failed``) and asked again by the next report, a verdict never is.
A torn last line (a killed report) is skipped. No API key is written: the judge is named by its
model alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass

#: Judge settings that do not change a verdict (transport, parallelism, secrets): not in the key.
TRANSPORT_KWARGS = ("nproc", "verbose", "retry", "timeout", "wait", "key", "api_base")
#: Row fields that never reach a judge or a check: not in the key.
_NOT_IN_ROW_KEY = ("index", "image", "image_path", "prediction")


def judge_cache_file(pred_root: str, model_name: str, dataset_name: str) -> str:
    """``<pred_root>/<model>_<dataset>_bon_judge.jsonl``, next to ``..._bon_candidates.jsonl``."""
    return os.path.join(pred_root, f"{model_name}_{dataset_name}_bon_judge.jsonl")


def judge_identity(judge_kwargs: Mapping) -> dict:
    """The judge settings that can change a verdict (model name, temperature, max_tokens, ...)."""
    return {k: judge_kwargs[k] for k in sorted(judge_kwargs) if k not in TRANSPORT_KWARGS}


def _plain(value):
    """JSON for numpy scalars, NaN and anything else VLMEvalKit puts in a row or a result."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)


def row_digest(benchmark: str, identity: Mapping, row: Mapping) -> str:
    """What a verdict can depend on besides the answer: the benchmark, the judge, the question row."""
    fields = {str(k): row[k] for k in row.keys() if k not in _NOT_IN_ROW_KEY}
    blob = json.dumps([benchmark, identity, fields], sort_keys=True, ensure_ascii=False, default=_plain)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def item_key(row_digest: str, text: str) -> str:
    """The cache key of one candidate answer to one question."""
    return hashlib.sha256(f"{row_digest}\0{text}".encode()).hexdigest()


@dataclass
class Judged:
    """One judged item: VLMEvalKit's per-row result and its check's verdict, or why there is none."""

    result: dict | None
    failed: bool  # the judge failed (an API failure, or its retries ran out): unscored, never wrong
    error: str | None = None
    judge_calls: int = 0
    correct: bool | None = None  # VLMEvalKit's check on ``result``; None when failed


class JudgeCache:
    """Read once, appended after every judged item (thread-safe; one report writes at a time)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._items: dict[str, Judged] = {}
        self._fence = False  # the file ends in a torn line: start the next append on a new line
        if os.path.exists(path):
            with open(path, "rb") as f:
                for raw in f:
                    if not raw.endswith(b"\n"):
                        self._fence = True
                        break  # torn final line
                    try:
                        rec = json.loads(raw)
                        self._items[rec["key"]] = Judged(
                            rec["result"],
                            bool(rec["failed"]),
                            rec.get("error"),
                            int(rec.get("judge_calls", 0)),
                            rec.get("correct"),
                        )
                    except (ValueError, KeyError, TypeError):
                        continue

    def get(self, key: str) -> Judged | None:
        return self._items.get(key)

    def needs_judging(self, key: str) -> bool:
        """Not judged yet, or the judge failed last time."""
        item = self._items.get(key)
        return item is None or item.failed

    def put(self, key: str, item: Judged, **meta) -> None:
        line = json.dumps({"key": key, **meta, **asdict(item)}, ensure_ascii=False, default=_plain) + "\n"
        with self._lock:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(("\n" if self._fence else "") + line)
            self._fence = False
            self._items[key] = item
