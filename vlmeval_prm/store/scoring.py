"""One scorer over a candidate store: what it is (its identity), how it cuts a candidate into steps (its
format's rule), and scoring the stored candidates it has not scored yet, each result appended as it comes.

Best-of-N scores its own candidates through it; ``vlmeval-prm report --compare`` scores a finished run's
candidates with other scorers through it, so one sampling run is scored by several scorers and the store
keeps every scorer's scores side by side (a score line names its scorer's digest).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from vlmeval_prm.logs import get_logger
from vlmeval_prm.prm import build_scorer, identity_from_server, scorer_identity, spec_format, validate_spec
from vlmeval_prm.prm.formats import format_class
from vlmeval_prm.select.aggregate import response_score
from vlmeval_prm.store.jsonl import CandidateStore, SampleRecords
from vlmeval_prm.store.records import ScoreRecord, digest

log = get_logger(__name__)


def changed(old: dict | None, new: dict) -> list[str]:
    """The entries of a scorer identity that differ (``format.system_prompt``, ``max_steps``, ...)."""
    if not isinstance(old, dict):
        return []
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{name}.{sub}" for sub in changed(a, b)]
        elif a != b:
            out.append(name)
    return out


class StoreScoring:
    """The scorer ``spec`` with ``options`` (checked here, before any work), built on first use: a store
    whose candidates are all scored never loads it. ``max_steps`` is part of its identity (it changes the
    steps); ``aggregate`` only fills the score line's ``response_score``; ``retry_failed``: a stored
    permanent failure with steps is scored again."""

    def __init__(
        self, spec: str, options: dict | None, max_steps: int, aggregate: str = "mean", retry_failed: bool = False
    ):
        self.spec, self.options = spec, dict(options or {})
        validate_spec(spec, self.options)
        self.max_steps, self.aggregate, self.retry_failed = max_steps, aggregate, retry_failed
        #: How candidates are cut into the steps this scorer scores: its format's rule.
        self.format = format_class(spec_format(spec, self.options))()
        self._scorer = None
        self._identity: tuple[dict, str] | None = None
        self._lock = threading.Lock()

    @property
    def scorer(self):
        with self._lock:
            if self._scorer is None:
                self._scorer = build_scorer(self.spec, **self.options)
            return self._scorer

    @property
    def identity(self) -> tuple[dict, str]:
        """(identity, digest): the scorer's (``prm.scorer_identity``, no model loaded) and ``max_steps``."""
        # a served PRM names its model once connected: the scorer is built first (outside the lock it takes)
        built = self.scorer if identity_from_server(self.spec) else None
        with self._lock:
            if self._identity is None:
                identity = {**scorer_identity(self.spec, self.options, built), "max_steps": self.max_steps}
                self._identity = identity, digest(identity)
            return self._identity

    def rescore(self, done: ScoreRecord) -> bool:
        """A stored failure is scored again when it was transient (connection error, timeout, 5xx), or
        with ``retry_failed`` when it has steps. Permanent ones (context length, no steps) stay failed."""
        return done.retry or (self.retry_failed and done.error is not None and bool(done.steps))

    def score_missing(
        self,
        store: CandidateStore,
        entry: SampleRecords,
        key: str,
        question: str,
        images: list[str],
        mode: str,
        n: int,
        sampling: str | None,
        on_other_scorer: Callable[[str], None] | None = None,
    ) -> int:
        """Score candidates 0..n-1 of ``entry`` (sampled with ``sampling``) that this scorer has not scored
        (or whose failure it retries) in ``mode``; append each result. ``on_other_scorer(changes)`` is told
        when another scorer's scores are there. Returns how many were scored."""
        identity, scorer = self.identity
        todo = []
        for i in range(n):
            text = entry.text(i, sampling)
            done = entry.score(i, self.spec, mode, sampling, scorer)
            if text is None or (done is not None and not self.rescore(done)):
                continue
            other = entry.score(i, self.spec, mode, sampling) if done is None else None
            if other is not None and on_other_scorer is not None:
                on_other_scorer(", ".join(changed(other.meta.get("identity"), identity)) or "unknown")
            todo.append((i, self.format.split(text, self.max_steps)))
        if not todo:
            return 0
        results = self.scorer.score(question, images, [steps for _, steps in todo], mode=mode)
        for (i, steps), res in zip(todo, results):
            store.append(
                ScoreRecord(
                    key=key,
                    i=i,
                    prm=self.spec,
                    mode=mode,
                    response_score=response_score(res.scores, self.aggregate) if res.ok else None,
                    steps=res.steps,
                    step_scores=res.scores,
                    error=res.error,
                    bounds=res.bounds,
                    meta={**res.meta, "identity": identity},
                    retry=res.error is not None and res.transient and bool(steps),
                    sampling=entry.candidate(i, sampling).sampling,
                    scorer=scorer,
                )
            )
        return len(todo)
