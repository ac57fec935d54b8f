"""The typed records of the candidate store, and BestOfN's per-row summary.

One dataclass per store line (field ``kind``: ``sample``, ``candidate``, ``score``); its fields, in
order, are the JSON fields of the line, so each is written in one place (``to_json``) and read in
one place (``from_json``). Every line carries the schema version ``v`` (``SCHEMA_VERSION``).

Versions: 0 is the format before ``v`` existed (same field names; a score line may lack ``mode``,
``bounds``, ``meta``, ``retry`` or ``response_score``, which read as their defaults). 1 adds ``v``.
2 ties what is stored to what produced it: a candidate carries the ``sampling`` digest of the
settings it was sampled with, a score the ``sampling`` digest of the candidate it scored and the
``scorer`` digest of the PRM's identity (``digest``); a line without them (versions 0 and 1) matches
any settings and any scorer, as it did. A line from a newer version than this code knows is an
error, never a guess, so an older vlmeval-prm refuses a version 2 store instead of mixing scorers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from vlmeval_prm.select.aggregate import usable

SCHEMA_VERSION = 2
VERSION_FIELD = "v"
#: Hex characters of a ``digest``: 64 bits, so two settings or scorers of one store never collide.
DIGEST_CHARS = 16


def digest(identity: dict) -> str:
    """The short, stable name of an identity (sampling settings, a scorer): its canonical JSON, hashed."""
    blob = json.dumps(identity, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]


class StoreError(ValueError):
    """A store line or summary this version cannot read."""


@dataclass(frozen=True)
class SampleRecord:
    """A question, written when BestOfN first sees it."""

    kind: ClassVar[str] = "sample"
    key: str
    dataset: str | None = None
    question: str = ""
    images: list[str] = field(default_factory=list)
    n: int = 0
    policy: str | None = None


@dataclass(frozen=True)
class CandidateRecord:
    """One sampled response (``text`` None: sampling failed, ``error`` says why). ``settings``: what
    this candidate's engine call got; ``sampling``: the digest of the run's sampling settings, which
    the candidate belongs to (None: written before version 2, belongs to any)."""

    kind: ClassVar[str] = "candidate"
    key: str
    i: int
    text: str | None = None
    error: str | None = None
    settings: dict = field(default_factory=dict)
    policy: str | None = None
    sampling: str | None = None


@dataclass(frozen=True)
class ScoreRecord:
    """The PRM's verdict on one candidate: ``mode`` "step" (every step) or "outcome" (the whole
    response as one step). ``response_score`` is the run's aggregate, kept for reading the store by
    eye; selection recomputes it from ``step_scores``. ``retry``: a transient failure (connection
    error, timeout, HTTP 5xx) that a rerun scores again; a permanent one is scored again only when
    the user asks (``retry_failed``). ``sampling``: the digest of the candidate it scored (None for a
    candidate written before version 2); ``scorer``: the digest of the PRM's identity, whose full
    form is ``meta["identity"]`` (None: written before version 2, matches any scorer)."""

    kind: ClassVar[str] = "score"
    key: str
    i: int
    prm: str
    mode: str = "step"
    response_score: float | None = None
    steps: list[str] = field(default_factory=list)
    step_scores: list[float] | None = None
    error: str | None = None
    bounds: list[str | None] | None = None
    meta: dict = field(default_factory=dict)
    retry: bool = False
    sampling: str | None = None
    scorer: str | None = None

    @property
    def usable(self) -> bool:
        """No error, at least one step score, every one finite. Anything else is unscored."""
        return self.error is None and usable(self.step_scores)

    @property
    def scores(self) -> list[float] | None:
        """The step scores if ``usable``, else None: what every selection reads."""
        return [float(s) for s in self.step_scores] if self.usable else None

    @property
    def unscored_reason(self) -> str | None:
        """None when usable; else "no_steps", "prm" (failed call) or "non_finite" (NaN/inf step score)."""
        if self.usable:
            return None
        if not self.steps:
            return "no_steps"
        if self.error is not None or not self.step_scores:
            return "prm"
        return "non_finite"


Record = SampleRecord | CandidateRecord | ScoreRecord
RECORD_TYPES: dict[str, type] = {cls.kind: cls for cls in (SampleRecord, CandidateRecord, ScoreRecord)}
#: Fields a line cannot do without; a line missing one is skipped as corrupt.
_REQUIRED = {"sample": ("key",), "candidate": ("key", "i"), "score": ("key", "i", "prm")}


def _check_version(obj: dict, what: str) -> None:
    version = obj.get(VERSION_FIELD, 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise StoreError(
            f"{what} has schema version {version!r}; this vlmeval-prm reads versions up to "
            f"{SCHEMA_VERSION}: upgrade vlmeval-prm"
        )


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a JSON value has a field's declared type (the forms the records use)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:  # JSON writes 1.0 as 1.0, but a hand-made 1 is a number too
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    return isinstance(value, origin or hint)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _typed(cls: type, values: dict) -> Any:
    """``cls(**values)``, or None when a value is not of its field's type (a corrupt line)."""
    hints = _hints(cls)
    if not all(_conforms(v, hints[k]) for k, v in values.items()):
        return None
    return cls(**values)


def to_json(record: Record) -> dict[str, Any]:
    """The JSON object of one store line: ``kind``, ``v``, then the record's fields in order."""
    return {
        "kind": record.kind,
        VERSION_FIELD: SCHEMA_VERSION,
        **{f.name: getattr(record, f.name) for f in fields(record)},
    }


def from_json(obj: Any) -> Record | None:
    """The record of one parsed line (any version up to ``SCHEMA_VERSION``); None for a line that is
    not a record (unknown kind, a required field missing or of the wrong type)."""
    if not isinstance(obj, dict) or obj.get("kind") not in RECORD_TYPES:
        return None
    kind = obj["kind"]
    if any(obj.get(name) is None for name in _REQUIRED[kind]) or not isinstance(obj["key"], str):
        return None
    _check_version(obj, f"store line {kind} {obj['key']}")
    cls = RECORD_TYPES[kind]
    values = {f.name: obj[f.name] for f in fields(cls) if f.name in obj and obj[f.name] is not None}
    if isinstance(values.get("i"), str) and values["i"].isdecimal():  # an index written as text
        values["i"] = int(values["i"])
    return _typed(cls, values)


@dataclass(frozen=True)
class Summary:
    """BestOfN's answer for one row, stored as JSON in VLMEvalKit's ``extra_records`` column.

    ``scores``: each candidate's response score (None: unscored); ``tied``: the candidates the
    selection rule gave a chance (``chosen`` was drawn among them); ``failures``: unscored candidates
    by reason ("generation", "no_steps", "prm", "non_finite"), ``unscored`` their total;
    ``duplicates``: candidates identical to an earlier one; ``sampling`` and ``scorer``: the digests
    of the candidates and scores it selected among, so a report reads those (None before version 2).
    """

    key: str
    n: int
    chosen: int | None = None
    scores: list[float | None] = field(default_factory=list)
    aggregate: str = "mean"
    prm: str | None = None
    failures: dict[str, int] = field(default_factory=dict)
    unscored: int = 0
    tied: list[int] = field(default_factory=list)
    duplicates: int = 0
    sampling: str | None = None
    scorer: str | None = None

    def to_json(self) -> str:
        out = {VERSION_FIELD: SCHEMA_VERSION, **{f.name: getattr(self, f.name) for f in fields(self)}}
        return json.dumps(out)

    @classmethod
    def from_json(cls, raw: Any) -> Summary | None:
        """The summary in a prediction row (any version); None when the row has none."""
        try:
            obj = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("key"), str):
            return None
        _check_version(obj, f"summary of {obj['key']}")
        values = {f.name: obj[f.name] for f in fields(cls) if obj.get(f.name) is not None}
        values.setdefault("n", 0)
        scores = values.get("scores")
        if isinstance(scores, list):  # a NaN or inf score reads as unscored
            values["scores"] = [s if not isinstance(s, float) or math.isfinite(s) else None for s in scores]
        return _typed(cls, values)
