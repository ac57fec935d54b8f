"""A reward model as a VLMEvalKit model, evaluated by reward benchmarks.

- VisualProcessBench: it scores the benchmark's given steps; the prediction is the JSON list of per-step
  P(+) (one scorer call, so one forward pass, per sample).
- VLRMBench (VLMEvalKit's ``VLRMBench``, ``datasets/vlrmbench.py``): the steps in its prompt are scored, and
  the prediction is the answer its evaluation reads: an error indicator per step (P(+) at most
  ``threshold``), ``Yes``/``No`` for foresight, two scores for a pair of responses.
- VL-RewardBench (VLMEvalKit's ``VLRewardBench``): it scores both responses, each cut into steps by its
  format, and prefers the one with the higher aggregate (``aggregate``, mean by default); the prediction is
  the dataset's own verdict line, ``Overall Judgment: Answer X is better.``, in the order the dataset shows
  the responses, so VLMEvalKit's own evaluation reads it. Equal scores are a tie, which that evaluation
  counts as wrong. A ``critic:`` judge instead answers the dataset's own prompt (it is a generative
  reward model: the benchmark was made for it).

A failure is a string holding VLMEvalKit's failure marker and the reason, never made-up scores:
VLMEvalKit retries such rows on a rerun and the evaluations count them as failed.
"""

from __future__ import annotations

import json
import os
from functools import partial

from vlmeval.smp.file import INFER_FAIL_MSG
from vlmeval.vlm.base import BaseModel

from vlmeval_prm.constants import DEFAULT_PRM_SPEC, MAX_STEPS
from vlmeval_prm.datasets.visualprocessbench import VisualProcessBench
from vlmeval_prm.datasets.vlrmbench import VLRMBENCH_DATASETS, vlrm_task
from vlmeval_prm.datasets.vlrmbench import answer as vlrm_answer
from vlmeval_prm.prm import PRMScorer, build_scorer, validate_spec
from vlmeval_prm.prm.formats import DEFAULT_FORMAT, format_class
from vlmeval_prm.select.aggregate import AGGREGATORS, response_score

#: Key of the JSON text item that carries the question and steps from build_prompt to generate_inner.
PAYLOAD_KEY = "vlmeval_prm_steps"
#: Key of the JSON text item that carries a VL-RewardBench question's two responses, in the shown order.
PAIR_KEY = "vlmeval_prm_pair"
#: Key of the JSON text item that carries a VLRMBench row's prompt and category.
VLRM_KEY = "vlmeval_prm_vlrm"
#: VLMEvalKit's VL-RewardBench dataset names (``VLRewardBench.DATASET_URL``).
PAIRWISE_DATASETS = ("VL-RewardBench",)


def shown_order(responses: list[str]) -> list[str]:
    """The order VL-RewardBench shows a pair in, which its evaluation scores against: reversed when the
    responses' total length is odd (ms-vlmeval 0.0.20 ``vlmeval/dataset/vl_rewardbench.py``,
    ``VLRewardBench.build_prompt`` and ``VLRewardBench_eval_answer``)."""
    return responses[::-1] if sum(len(r) for r in responses) % 2 == 1 else list(responses)


class PRMJudge(BaseModel):
    """Wraps a :class:`PRMScorer` built from a spec string (``vlmeval_prm.prm.build_scorer``).

    ``prm``: a spec string or a ready scorer. ``spec_env``: name of an environment variable that,
    when set, replaces ``prm`` (lets a registered name point at another server without new code).
    Other keyword arguments go to the backend (e.g. ``system_prompt``, ``batch_size``).
    """

    allowed_types = ["text", "image"]

    def __init__(
        self,
        prm: str | PRMScorer | None = None,
        spec_env: str | None = None,
        aggregate: str = "mean",
        max_steps: int = MAX_STEPS,
        threshold: float = 0.5,
        **options,
    ):
        super().__init__()
        prm = (os.environ.get(spec_env) if spec_env else None) or prm
        if prm is None:
            raise ValueError(f"PRMJudge needs a PRM spec, e.g. prm={DEFAULT_PRM_SPEC!r}")
        if aggregate not in AGGREGATORS:
            raise ValueError(f"aggregate must be one of {sorted(AGGREGATORS)}, got {aggregate!r}")
        self.aggregate, self.max_steps, self.threshold = aggregate, max_steps, threshold
        if not isinstance(prm, PRMScorer):
            validate_spec(prm, options)  # a bad spec fails here, not at the first sample
            prm = build_scorer(prm, **options)
        self.scorer = prm
        #: How a response is cut into the steps the scorer scores (VL-RewardBench): its format's rule (a critic,
        #: which has no format, gets the default one).
        self.format = getattr(prm, "fmt", None) or format_class(DEFAULT_FORMAT)()

    @property
    def generative(self) -> bool:
        """A judge that answers prompts (``critic:``), not a scorer of steps only."""
        return hasattr(self.scorer, "judge")

    def use_custom_prompt(self, dataset: str | None) -> bool:
        if dataset in PAIRWISE_DATASETS or dataset in VLRMBENCH_DATASETS:
            return not self.generative
        return dataset in VisualProcessBench.supported_datasets()

    def build_prompt(self, line, dataset: str | None = None) -> list[dict]:
        """The images, then one text item: JSON with the question and the benchmark's steps (or, for
        VL-RewardBench, its two responses in the order it shows them)."""
        if dataset in PAIRWISE_DATASETS:
            from vlmeval.smp import toliststr

            payload = {PAIR_KEY: shown_order(toliststr(line["response"])), "question": str(line["question"])}
        elif dataset in VLRMBENCH_DATASETS:
            payload = {VLRM_KEY: [str(line["question"]), str(line["category"])]}
        else:
            payload = {PAYLOAD_KEY: json.loads(line["steps"]), "question": str(line["question"])}
        msgs = [dict(type="image", value=p) for p in self.dump_image(line, dataset)]
        msgs.append(dict(type="text", value=json.dumps(payload, ensure_ascii=False)))
        return msgs

    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        payload = _payload(message)
        if payload is None and self.generative:  # the dataset's own prompt, to a judge that answers prompts
            return self.scorer.judge.generate(message=message, dataset=dataset)
        images = [m["value"] for m in message if m["type"] == "image"]
        try:
            if payload is not None and PAIR_KEY in payload:
                return self._prefer(payload, images)
            if payload is not None and VLRM_KEY in payload:
                return self._vlrm(*payload[VLRM_KEY], images)
            if payload is None:
                raise _Unscored(
                    f"PRMJudge scores given steps; {dataset or 'this dataset'} provides none "
                    f"(supported: {', '.join(VisualProcessBench.supported_datasets())})"
                )
            steps = payload[PAYLOAD_KEY]
            (scores,) = self._scored(payload["question"], images, [steps])
            if len(scores) != len(steps):
                raise _Unscored(f"{len(scores)} scores for {len(steps)} steps")
            return json.dumps(scores)
        except _Unscored as exc:
            return _failure(getattr(self.scorer, "identity", type(self.scorer).__name__), str(exc))

    def _scored(self, question: str, images: list[str], candidates: list[list[str]], name=None) -> list[list[float]]:
        """Every candidate's step scores; ``_Unscored`` with the reason when the backend raises or a candidate
        fails (``name(k)`` prefixes the k-th one's reason)."""
        try:
            results = self.scorer.score(question, images, candidates, mode="step")
        except Exception as exc:  # a backend should not raise, but a broken connection must not end the run
            raise _Unscored(f"{type(exc).__name__}: {exc}") from None
        bad = [(name(k) if name else "") + (r.error or "no scores") for k, r in enumerate(results) if not r.ok]
        if bad:
            raise _Unscored("; ".join(bad))
        return [r.scores for r in results]

    def _prefer(self, payload: dict, images: list[str]) -> str:
        """Score both responses; the verdict line VL-RewardBench's evaluation reads (1-based, shown order)."""
        steps = [self.format.split(r, self.max_steps) for r in payload[PAIR_KEY]]
        scores = self._scored(payload["question"], images, steps, name=lambda k: f"response {k + 1}: ")
        values = [response_score(s, self.aggregate) for s in scores]
        detail = f" (PRM {self.aggregate}: {values[0]:.4f} vs {values[1]:.4f})"
        if values[0] == values[1]:
            return f"Overall Judgment: the two answers tie{detail}."
        return f"Overall Judgment: Answer {1 if values[0] > values[1] else 2} is better{detail}."

    def _vlrm(self, prompt: str, category: str, images: list[str]) -> str:
        """A VLRMBench row: its steps (or two responses) scored, answered as its evaluation reads."""
        try:
            task = vlrm_task(prompt, category)
        except ValueError as exc:
            raise _Unscored(str(exc)) from None
        candidates = [task.steps] if task.pair is None else [self.format.split(r, self.max_steps) for r in task.pair]
        scores = self._scored(task.question, images, candidates)
        return vlrm_answer(task, scores, self.threshold, partial(response_score, how=self.aggregate))


class _Unscored(Exception):
    """Why a row gets no prediction: written as VLMEvalKit's failure marker and this reason."""


def _payload(message: list[dict]) -> dict | None:
    for item in message:
        if item["type"] != "text":
            continue
        try:
            value = json.loads(item["value"])
        except ValueError:
            continue
        if isinstance(value, dict) and any(isinstance(value.get(k), list) for k in (PAYLOAD_KEY, PAIR_KEY, VLRM_KEY)):
            return value
    return None


def _failure(identity: str, reason: str) -> str:
    return f"{INFER_FAIL_MSG}: PRM {identity} failed: {reason}"
