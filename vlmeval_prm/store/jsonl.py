"""Append-only candidate store: one JSONL file per model x dataset, written as soon as data exists.

Each line is one typed record (``records``: ``SampleRecord``, ``CandidateRecord``, ``ScoreRecord``);
``read_records`` is the one reader, ``CandidateStore.append`` the one writer, ``encode`` the one
serialisation. Stores written before the schema version existed read the same.

The last record for (key, i, sampling) or (key, i, prm, mode, sampling, scorer) wins, so a retried
failure simply appends (``SampleRecords`` has the lookup rules).
Appends take an exclusive ``flock`` and a thread lock and go out in one ``write`` call, so torchrun
ranks and ``--api-nproc`` threads can share the file. A line cut short by ``kill -9`` is skipped
when reading and fenced off with a newline before the next append.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vlmeval_prm.store.records import CandidateRecord, Record, SampleRecord, ScoreRecord, from_json, to_json

_LOCK = threading.Lock()


@dataclass
class SampleRecords:
    """Everything stored for one sample key; of the records that match a lookup, the last one written wins.

    A candidate belongs to the sampling settings it was drawn with (``sampling``), a score to the
    candidate it scored and to its scorer (``scorer``): lookups take the run's digests, and a
    digest of None in a lookup means any. A record written before version 2 (no digests) matches
    any settings and any scorer. ``candidates`` holds the last candidate of each index, whatever
    its settings.
    """

    sample: SampleRecord | None = None
    candidates: dict[int, CandidateRecord] = field(default_factory=dict)
    #: (i, prm, mode, sampling, scorer) -> score, in the order written
    scores: dict[tuple[int, str, str, str | None, str | None], ScoreRecord] = field(default_factory=dict)
    #: (i, sampling) -> candidate, in the order written
    sampled: dict[tuple[int, str | None], CandidateRecord] = field(default_factory=dict)

    def candidate(self, i: int, sampling: str | None = None) -> CandidateRecord | None:
        """Candidate i drawn with the settings ``sampling`` (or before version 2); any when None."""
        if sampling is None:
            return self.candidates.get(i)
        for (j, drawn), rec in reversed(self.sampled.items()):
            if j == i and drawn in (sampling, None):
                return rec
        return None

    def text(self, i: int, sampling: str | None = None) -> str | None:
        """Candidate i's text, well-formed (``well_formed``); None when it is missing or failed."""
        cand = self.candidate(i, sampling)
        return well_formed(cand.text) if cand is not None and cand.text is not None else None

    def score(
        self, i: int, prm: str, mode: str = "step", sampling: str | None = None, scorer: str | None = None
    ) -> ScoreRecord | None:
        """The score of ``candidate(i, sampling)`` by ``prm`` in ``mode`` from the scorer ``scorer``
        (or from before version 2; any when None)."""
        cand = self.candidate(i, sampling)
        scored = cand.sampling if cand is not None else sampling
        for (j, p, m, s, by), rec in reversed(self.scores.items()):
            if (j, p, m, s) == (i, prm, mode, scored) and (scorer is None or by in (scorer, None)):
                return rec
        return None

    def add(self, rec: Record) -> None:
        if isinstance(rec, SampleRecord):
            self.sample = rec
        elif isinstance(rec, CandidateRecord):
            self.candidates[rec.i] = rec
            _put_last(self.sampled, (rec.i, rec.sampling), rec)
        else:
            _put_last(self.scores, (rec.i, rec.prm, rec.mode, rec.sampling, rec.scorer), rec)


def _put_last(index: dict, key: tuple, rec: Record) -> None:
    """``index[key] = rec``, moved to the end: the index keeps the order records were written in."""
    index.pop(key, None)
    index[key] = rec


def well_formed(text: str) -> str:
    """``text`` with every lone surrogate (e.g. ``"\\ud800"`` decoded from a server's JSON) as U+FFFD:
    what tokenizers, VLMEvalKit's xlsx writer and judges accept. The store keeps the exact text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def encode(record: Record) -> bytes:
    """One store line (UTF-8 JSON and a newline). A string holding a lone surrogate has no UTF-8 form:
    that line is written with JSON's ASCII escapes (``\\ud800``), which read back to the same text."""
    obj = to_json(record)
    try:
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(obj) + "\n").encode("ascii")


def read_records(path: str) -> Iterator[Record]:
    """Every complete record in file order; a torn, corrupt or unknown line is skipped."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn final line from a killed writer
            try:
                obj = json.loads(raw)
            except ValueError:
                continue  # corrupt line
            rec = from_json(obj)  # raises StoreError for a line from a newer version
            if rec is not None:
                yield rec


def index_records(records: Iterable[Record]) -> dict[str, SampleRecords]:
    out: dict[str, SampleRecords] = {}
    for rec in records:
        out.setdefault(rec.key, SampleRecords()).add(rec)
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

    def append(self, *records: Record) -> None:
        """Append records in one ``write`` call, so the candidates of one batched call are stored together."""
        if not records:
            return
        line = b"".join(encode(r) for r in records)
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
                for record in records:
                    self._index.setdefault(record.key, SampleRecords()).add(record)
