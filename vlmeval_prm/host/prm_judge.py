"""A PRM as a VLMEvalKit model, for VisualProcessBench: it scores the benchmark's given steps.

The prediction is the JSON list of per-step P(+) (one scorer call, so one forward pass, per sample).
A failure is a string holding VLMEvalKit's failure marker and the reason, never made-up scores:
VLMEvalKit retries such rows on a rerun and VisualProcessBench.evaluate counts them as failed.
"""

from __future__ import annotations

import json
import os
from functools import partial

from vlmeval.smp.file import INFER_FAIL_MSG
from vlmeval.vlm.base import BaseModel

from vlmeval_prm.constants import DEFAULT_PRM_SPEC
from vlmeval_prm.datasets.visualprocessbench import VisualProcessBench
from vlmeval_prm.prm import PRMScorer, build_scorer, validate_spec

#: Key of the JSON text item that carries the question and steps from build_prompt to generate_inner.
PAYLOAD_KEY = "vlmeval_prm_steps"


class PRMJudge(BaseModel):
    """Wraps a :class:`PRMScorer` built from a spec string (``vlmeval_prm.prm.build_scorer``).

    ``prm``: a spec string or a ready scorer. ``spec_env``: name of an environment variable that,
    when set, replaces ``prm`` (lets a registered name point at another server without new code).
    Other keyword arguments go to the backend (e.g. ``system_prompt``, ``batch_size``).
    """

    allowed_types = ["text", "image"]

    def __init__(self, prm: str | PRMScorer | None = None, spec_env: str | None = None, **options):
        super().__init__()
        prm = (os.environ.get(spec_env) if spec_env else None) or prm
        if prm is None:
            raise ValueError(f"PRMJudge needs a PRM spec, e.g. prm={DEFAULT_PRM_SPEC!r}")
        if not isinstance(prm, PRMScorer):
            validate_spec(prm, options)  # a bad spec fails here, not at the first sample
            prm = build_scorer(prm, **options)
        self.scorer = prm

    def use_custom_prompt(self, dataset: str | None) -> bool:
        return dataset in VisualProcessBench.supported_datasets()

    def build_prompt(self, line, dataset: str | None = None) -> list[dict]:
        """The images, then one text item: JSON with the question and the benchmark's steps."""
        payload = {PAYLOAD_KEY: json.loads(line["steps"]), "question": str(line["question"])}
        msgs = [dict(type="image", value=p) for p in self.dump_image(line, dataset)]
        msgs.append(dict(type="text", value=json.dumps(payload, ensure_ascii=False)))
        return msgs

    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        payload = _payload(message)
        fail = partial(_failure, getattr(self.scorer, "identity", type(self.scorer).__name__))
        if payload is None:
            return fail(
                f"PRMJudge scores given steps; {dataset or 'this dataset'} provides none "
                f"(supported: {', '.join(VisualProcessBench.supported_datasets())})"
            )
        steps, images = payload[PAYLOAD_KEY], [m["value"] for m in message if m["type"] == "image"]
        try:
            result = self.scorer.score(payload["question"], images, [steps], mode="step")[0]
        except Exception as exc:  # a backend should not raise, but a broken connection must not end the run
            return fail(f"{type(exc).__name__}: {exc}")
        if not result.ok:
            return fail(result.error or "no scores")
        if len(result.scores) != len(steps):
            return fail(f"{len(result.scores)} scores for {len(steps)} steps")
        return json.dumps(result.scores)


def _payload(message: list[dict]) -> dict | None:
    for item in message:
        if item["type"] != "text":
            continue
        try:
            value = json.loads(item["value"])
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get(PAYLOAD_KEY), list):
            return value
    return None


def _failure(identity: str, reason: str) -> str:
    return f"{INFER_FAIL_MSG}: PRM {identity} failed: {reason}"
