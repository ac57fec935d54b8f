"""``BestOfN``: a VLMEvalKit model that samples N step-by-step answers from a base model, scores
every step with a PRM and answers with the best candidate.

Data flows one way: sample -> split steps -> score -> select -> store. Every candidate and score is
appended to the candidate store the moment it exists, and read back on a rerun, so nothing is
sampled or scored twice. A candidate belongs to the sampling settings it was drawn with and a score
to the scorer that made it (digests of both, ``store.records``): a rerun with other settings samples
afresh, one with another PRM identity scores again, and each says so once per store.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import inspect
import json
import os
import random
import threading

import numpy as np
import torch
from vlmeval.inference import FAIL_MSG  # VLMEvalKit retries predictions holding it on the next run
from vlmeval.vlm.base import BaseModel

from vlmeval_prm.constants import DEFAULT_PRM_SPEC, DEFAULT_STEP_PROMPT, MAX_STEPS, SPEC_ENV
from vlmeval_prm.host.config_keys import check_keys
from vlmeval_prm.host.run_context import store_path
from vlmeval_prm.loading import message_parts
from vlmeval_prm.logs import get_logger
from vlmeval_prm.policy import SamplingConfig, get_adapter
from vlmeval_prm.policy.base import permanent_failure
from vlmeval_prm.policy.build import build_base
from vlmeval_prm.remote_code import prepare_policy
from vlmeval_prm.select.aggregate import AGGREGATORS
from vlmeval_prm.select.strategies import Candidate, get_strategy, pick
from vlmeval_prm.store.jsonl import CandidateStore, SampleRecords
from vlmeval_prm.store.records import CandidateRecord, SampleRecord, Summary, digest
from vlmeval_prm.store.scoring import StoreScoring

log = get_logger(__name__)

#: The sampling settings that change what is sampled (``SamplingConfig`` fields; with the step
#: prompt they make a candidate's ``sampling`` digest). Not batch_size: it changes speed only.
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_new_tokens", "first_greedy")


class PolicyFailure(SystemExit):
    """Every candidate of the first question failed the same permanent way: the run stops.

    A SystemExit, not an Exception, because ms-vlmeval 0.0.20's run.py catches ``Exception`` per
    model x dataset, logs it and goes on with exit code 0, and ``track_progress_rich`` hands a worker
    thread's exception to the main thread as it is. A SystemExit passes both, so ``python -m
    vlmeval.run`` ends with exit code 1 and this message instead of writing a failed prediction for
    every question. The original exception and its traceback are logged before it is raised."""


class DuplicateTally:
    """Identical candidates over a process: the first sample that has some is logged when it
    happens, the totals once at exit (one line per model), not a line per question."""

    def __init__(self):
        self._lock = threading.Lock()
        #: model -> [samples, samples with identical candidates, identical candidates, candidates]
        self.counts: dict[str, list[int]] = {}

    def add(self, name: str, key: str, duplicates: int, present: int) -> None:
        with self._lock:
            first_ever = not self.counts
            counts = self.counts.setdefault(name, [0, 0, 0, 0])
            first = duplicates and not counts[1]
            for j, value in enumerate((1, bool(duplicates), duplicates, present)):
                counts[j] += value
        if first_ever:
            atexit.register(self.report)
        if first:
            log.warning(
                "%s: %d of %d candidates of sample %s are identical to an earlier one (the first such "
                "sample; the rest are counted and summed up when the run ends)",
                name,
                duplicates,
                present,
                key,
            )

    def report(self) -> None:
        with self._lock:
            counts = dict(self.counts)
        for name, (samples, with_duplicates, duplicates, present) in counts.items():
            if with_duplicates:
                log.warning(
                    "%s: %d of %d samples had identical candidates (%d of %d candidates identical to an "
                    "earlier one of their sample; each row's summary counts its own)",
                    name,
                    with_duplicates,
                    samples,
                    duplicates,
                    present,
                )


DUPLICATES = DuplicateTally()


def sample_key(dataset: str | None, message: list[dict]) -> str:
    """Identity of a prompt: its text and, per image, the file name and content. Not the folder, so
    a store still matches after ``$LMUData`` (where VLMEvalKit dumps images) moves; the file name
    (VLMEvalKit names it by row index) keeps two rows with the same image and text apart."""
    parts = []
    for m in message:
        value = m["value"]
        if m["type"] == "image":
            try:
                with open(value, "rb") as f:
                    value = f"{os.path.basename(value)}:{hashlib.sha256(f.read()).hexdigest()}"
            except (OSError, ValueError):  # ValueError: a NUL or lone surrogate in the path
                pass  # unreadable: the path stands in; the failure is recorded when sampling
        parts.append([m["type"], value])
    blob = json.dumps([dataset, parts], ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def candidate_seed(key: str, i: int) -> int:
    """The sampling seed of candidate ``i`` of a sample: from its store key and index alone, so a run
    resumed after a kill draws the candidates an uninterrupted run would have drawn."""
    return int.from_bytes(hashlib.sha256(f"{key}/{i}".encode()).digest()[:4], "big")


#: Held while a local policy samples from seeded RNGs. The RNGs are process-global, so with threads
#: (``--api-mode --api-nproc K`` with a local model) candidates would draw from each other's seeds;
#: one seeded sampling at a time in a process makes the stored candidates independent of the threads.
SEEDED_SAMPLING = threading.Lock()


def seed_sampling(seed: int) -> None:
    """Seed every RNG a local policy's sampling may draw from (Python, NumPy, torch on all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _own_keys(cls: type) -> list[str]:
    """The config keys a wrapper's constructor names itself (not ``model`` and the base's ``**kwargs``)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("self", "model")]


class BestOfN(BaseModel):
    """Best-of-N over any VLMEvalKit model. Keyword arguments it does not know go to the base model
    (e.g. ``use_vllm``, which VLMEvalKit injects for Qwen2-VL names)."""

    def __init__(
        self,
        model,
        n: int = 8,
        prm: str | None = None,
        prm_options: dict | None = None,
        temperature: float = 0.7,
        top_p: float = 0.95,
        top_k: int | None = None,
        max_new_tokens: int | None = None,
        first_greedy: bool = False,
        aggregate: str = "mean",
        batch_size: int | None = None,
        max_steps: int = MAX_STEPS,
        step_prompt: str = DEFAULT_STEP_PROMPT,
        orm: bool = False,
        retry_failed: bool = False,
        name: str | None = None,
        **base_kwargs,
    ):
        super().__init__()
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if aggregate not in AGGREGATORS:
            raise ValueError(f"aggregate must be one of {sorted(AGGREGATORS)}, got {aggregate!r}")
        self.n, self.aggregate, self.max_steps, self.orm = n, aggregate, max_steps, orm
        self.prm_spec = prm or os.environ.get(SPEC_ENV) or DEFAULT_PRM_SPEC
        self.prm_options = dict(prm_options or {})
        # a bad spec fails here, before any sampling
        self.scoring = StoreScoring(self.prm_spec, self.prm_options, max_steps, aggregate, retry_failed)
        self.sampling = SamplingConfig(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_new_tokens=max_new_tokens,
            first_greedy=first_greedy,
            batch_size=batch_size,
        )
        self.base_name = model if isinstance(model, str) else model.get("class", "custom")
        self.name = name or f"{self.base_name}-BoN{n}"
        base_keys = [*base_kwargs, *(k for k in model if k != "class")] if isinstance(model, dict) else base_kwargs
        check_keys(model, base_keys, wrapper_keys=_own_keys(type(self)))  # a typo fails here, before any load
        self.base = build_base(model, **base_kwargs)
        prepare_policy(self.base)  # remote-code weights made right (or refused) before any sampling
        self.adapter = get_adapter(self.base)  # fails here, naming the class, if it cannot sample
        self.adapter.check(self.base)
        self.step_prompt = None if self.adapter.enable_cot(self.base) else step_prompt
        self.sampling_identity = {
            **{k: getattr(self.sampling, k) for k in SAMPLING_KEYS},
            "step_prompt": self.step_prompt,
        }
        self.sampling_id = digest(self.sampling_identity)
        self.is_api = getattr(self.base, "is_api", False)
        self.INTERLEAVE = getattr(self.base, "INTERLEAVE", False)
        self._stores: dict[str, CandidateStore] = {}
        self._lock = threading.Lock()
        self._said: set[tuple[str, str]] = set()  # (store, what): what was said once per store
        self._vetted = False  # the first sample's candidates were checked (``_stop_if_broken``)
        self._stopped: str | None = None

    # -- VLMEvalKit model protocol, delegated to the base model -------------------------------
    def use_custom_prompt(self, dataset):
        """VLMEvalKit asks ``hasattr(model, "use_custom_prompt")`` first; a base without it (GPT4V in
        ms-vlmeval 0.0.20) gets the dataset's prompt, as it would alone."""
        use = getattr(self.base, "use_custom_prompt", None)
        if not callable(use):
            return False
        with self.adapter.scope(self.base):  # e.g. InternVL reads USE_COT while deciding
            return bool(use(dataset))

    def build_prompt(self, line, dataset=None):
        with self.adapter.scope(self.base):
            return self.base.build_prompt(line, dataset=dataset)

    def set_dump_image(self, dump_image_func):
        super().set_dump_image(dump_image_func)
        if hasattr(self.base, "set_dump_image"):
            self.base.set_dump_image(dump_image_func)

    def generate_inner(self, message, dataset=None):
        return self.generate(message, dataset)

    # -- Best-of-N -----------------------------------------------------------------------------
    @property
    def prm(self):
        """Built on first use: a rerun whose candidates are all scored never touches the PRM."""
        return self.scoring.scorer

    @property
    def prm_identity(self) -> tuple[dict, str]:
        """(identity, digest) of the scorer (``StoreScoring.identity``): scores stored by another are not this run's."""
        return self.scoring.identity

    def _say_once(self, store: CandidateStore, what: str, message: str, *args) -> None:
        with self._lock:
            if (store.path, what) in self._said:
                return
            self._said.add((store.path, what))
        log.warning(message, *args)

    def store(self, dataset: str | None) -> CandidateStore:
        path = store_path(self.name, dataset)
        with self._lock:
            if path not in self._stores:
                self._stores[path] = CandidateStore(path)
            return self._stores[path]

    def prompt_message(self, message: list[dict]) -> list[dict]:
        if not self.step_prompt:
            return message
        last_text = max((i for i, m in enumerate(message) if m["type"] == "text"), default=None)
        if last_text is None:
            return message + [{"type": "text", "value": self.step_prompt}]
        out = [dict(m) for m in message]
        out[last_text]["value"] = f"{out[last_text]['value']}\n{self.step_prompt}"
        return out

    def generate(self, message, dataset=None):
        if self._stopped is not None:  # the other questions in flight stop too, without sampling
            raise PolicyFailure(self._stopped)
        message = self.preproc_content(message)
        if message is None:
            raise ValueError(f"unsupported message format for {self.name}")
        prompt = self.prompt_message(message)
        question, images = message_parts(message)
        store = self.store(dataset)
        key = sample_key(dataset, prompt)
        entry = store.get(key)
        if entry.sample is None:
            store.append(
                SampleRecord(
                    key=key, dataset=dataset, question=question, images=images, n=self.n, policy=self.base_name
                )
            )
        self._sample_missing(store, entry, key, prompt, dataset)
        self._score_missing(store, entry, key, question, images, "step")
        if self.orm:
            self._score_missing(store, entry, key, question, images, "outcome")
        return self._select(entry, key, dataset)

    def _sample_missing(self, store: CandidateStore, entry: SampleRecords, key: str, prompt, dataset) -> None:
        """Sample the candidates the store lacks. A local policy is seeded per candidate
        (``candidate_seed``): before the first missing one, and again before each next one as
        one-by-one adapters hand them over; a batched call draws from its first candidate's seed and
        its candidates are stored in one write. A run killed and resumed therefore samples what an
        uninterrupted run would have (servers sample with their own seeds)."""
        missing = [i for i in range(self.n) if entry.text(i, self.sampling_id) is None]
        if not missing:
            return
        if any(entry.text(i) is not None for i in missing):
            self._say_once(
                store,
                "sampling",
                "%s: candidates stored in %s were sampled with other settings; sampling afresh with %s",
                self.name,
                store.path,
                self.sampling_identity,
            )
        seeded = not self.is_api
        written: set[int] = set()

        def record(j: int, s) -> CandidateRecord:
            return CandidateRecord(
                key=key,
                i=missing[j],
                text=s.text,
                error=s.error,
                settings=s.settings,
                policy=self.base_name,
                sampling=self.sampling_id,
            )

        def write(j: int, s) -> None:  # stored the moment it exists
            store.append(record(j, s))
            written.add(j)
            if seeded and j + 1 < len(missing):
                seed_sampling(candidate_seed(key, missing[j + 1]))

        with SEEDED_SAMPLING if seeded else contextlib.nullcontext():
            if seeded:
                seed_sampling(candidate_seed(key, missing[0]))
            samples = self.adapter.sample(
                self.base,
                prompt,
                dataset,
                len(missing),
                self.sampling,
                greedy_first=self.sampling.first_greedy and missing[0] == 0,
                on_sample=write,
            )
        # adapters that make one call for all candidates: all of them in one write
        store.append(*(record(j, s) for j, s in enumerate(samples) if j not in written))
        self._stop_if_broken(samples, entry)

    def _stop_if_broken(self, samples: list, entry: SampleRecords) -> None:
        """Stop the run (``PolicyFailure``) when every candidate of the first sample this model
        samples failed with one and the same permanent exception: every other question would fail
        the same way. Transient failures (connection errors, timeouts, HTTP 5xx, out of memory) are
        recorded as ever, and sampled again on the next run."""
        with self._lock:
            first, self._vetted = not self._vetted, True
        exc = permanent_failure(samples) if first else None
        if exc is None or any(entry.text(i, self.sampling_id) is not None for i in range(self.n)):
            return
        message = (
            f"vlmeval-prm: {self.name} stops the run: every candidate of the first question failed with the "
            "same error, so every question would; no failed predictions are written. Fix the base model or "
            f"its settings and run again. The error: {samples[0].error}"
        )
        with self._lock:
            self._stopped = message
        log.error(message, exc_info=exc)
        raise PolicyFailure(message) from exc

    def _score_missing(
        self, store: CandidateStore, entry: SampleRecords, key: str, question: str, images: list[str], mode: str
    ) -> None:
        def other_scorer(changes: str) -> None:
            self._say_once(
                store,
                f"scorer-{mode}",
                "%s: %s scores stored in %s were made by another scorer (changed: %s); scoring every candidate again",
                self.name,
                mode,
                store.path,
                changes,
            )

        self.scoring.score_missing(store, entry, key, question, images, mode, self.n, self.sampling_id, other_scorer)

    def _select(self, entry: SampleRecords, key: str, dataset: str | None) -> dict:
        """The report's rule (``strategies``, ``prm_<aggregate>``): a draw among the best-scored
        candidates, seeded by the sample key. An unscored candidate (no text, no steps, a failed
        PRM call, a NaN or inf step score) is never picked over a scored one, and is counted. The
        store keeps the whole reasoning; the prediction is what the base model's own CoT mode would
        return for the chosen text (e.g. InternVL's MPO post-processing, MiniCPM's answer extraction)."""
        scorer = self.prm_identity[1]
        texts = [entry.text(i, self.sampling_id) for i in range(self.n)]
        records = [entry.score(i, self.prm_spec, "step", self.sampling_id, scorer) for i in range(self.n)]
        failures = {"generation": 0, "no_steps": 0, "prm": 0, "non_finite": 0}
        for text, rec in zip(texts, records):
            reason = "generation" if text is None else "prm" if rec is None else rec.unscored_reason
            if reason is not None:
                failures[reason] += 1
        present = [t for t in texts if t is not None]
        duplicates = len(present) - len(set(present))
        DUPLICATES.add(self.name, key, duplicates, len(present))
        strategy = get_strategy(f"prm_{self.aggregate}")
        cands = [
            Candidate(text=t, answer=None, correct=None, step_scores=r.scores if t is not None and r else None)
            for t, r in zip(texts, records)
        ]
        chosen = pick(strategy, cands, key)
        summary = Summary(
            key=key,
            n=self.n,
            chosen=chosen,
            scores=[strategy.value(c) for c in cands],
            aggregate=self.aggregate,
            prm=self.prm_spec,
            failures=failures,
            unscored=sum(failures.values()),
            tied=[i for i, p in enumerate(strategy.probabilities(cands)) if p > 0],
            duplicates=duplicates,
            sampling=self.sampling_id,
            scorer=scorer,
        )
        if chosen is None:
            prediction = f"{FAIL_MSG} vlmeval-prm: no candidate could be scored ({failures})"
            log.warning(
                "%s: no candidate of sample %s could be scored (%s); VLMEvalKit retries it on the next run",
                self.name,
                key,
                failures,
            )
        else:
            prediction = self.adapter.final_answer(self.base, texts[chosen], dataset)
        return {"prediction": prediction, "extra_records": summary.to_json()}
