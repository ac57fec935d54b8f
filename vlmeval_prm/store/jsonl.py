"""Append-only candidate store: one JSONL file per model x dataset, written as soon as data exists.

Records (one JSON object per line, field ``kind``):
- ``sample``: key, dataset, question, images, n, policy — written when a sample is first seen.
- ``candidate``: key, i, text, error, settings, policy — one per generated candidate.
- ``score``: key, i, prm, mode ("step"|"outcome"), steps, step_scores, error, bounds, meta, retry.

The last record for (key, i) or (key, i, prm, mode) wins, so a retried failure simply appends.
Appends take an exclusive ``flock`` and a thread lock and go out in one ``write`` call, so torchrun
ranks and ``--api-nproc`` threads can share the file. A line cut short by ``kill -9`` is skipped
when reading and fenced off with a newline before the next append.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

_LOCK = threading.Lock()


@dataclass
class SampleRecords:
    sample: dict | None = None
    candidates: dict[int, dict] = field(default_factory=dict)
    scores: dict[tuple[int, str, str], dict] = field(default_factory=dict)

    def score(self, i: int, prm: str, mode: str = "step") -> dict | None:
        return self.scores.get((i, prm, mode))


def read_records(path: str) -> Iterator[dict]:
    """Every complete record in file order; a torn or corrupt line is skipped."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn final line from a killed writer
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and "kind" in rec and "key" in rec:
                yield rec


def index_records(records) -> dict[str, SampleRecords]:
    out: dict[str, SampleRecords] = {}
    for rec in records:
        _apply(out.setdefault(rec["key"], SampleRecords()), rec)
    return out


class CandidateStore:
    """Read once (lazily) for resuming; append forever after."""

    def __init__(self, path: str):
        self.path = path
        self._index: dict[str, SampleRecords] | None = None

    def get(self, key: str) -> SampleRecords:
        with _LOCK:
            if self._index is None:
                self._index = index_records(read_records(self.path))
            return self._index.setdefault(key, SampleRecords())

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with _LOCK:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # fence off a torn line left by a killed writer
                os.write(fd, line)
            finally:
                os.close(fd)  # closing releases the flock
            if self._index is not None:
                _apply(self._index.setdefault(record["key"], SampleRecords()), record)


def _apply(entry: SampleRecords, rec: dict) -> None:
    if rec["kind"] == "sample":
        entry.sample = rec
    elif rec["kind"] == "candidate":
        entry.candidates[int(rec["i"])] = rec
    elif rec["kind"] == "score":
        entry.scores[(int(rec["i"]), rec["prm"], rec.get("mode", "step"))] = rec
