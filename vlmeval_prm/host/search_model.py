"""``PRMSearch``: PRM-guided search (``vlmeval_prm.search``: beam search, DVTS, Best-of-N by steps) as a
VLMEvalKit model: ``<model>-Beam<W>x<N>`` / ``<model>-DVTS<W>x<N>`` names, or ``{"class": "PRMSearch", "method":
"beam", ...}`` in ``--config``.

Per question: the steps of the policy's answer are grown by the method over the policy's step extension
(``policy.step_extension``) and scored by the PRM; every expansion is appended to the search store as it is
made, so a killed run resumes without generating a kept step again (``store.search_log``); the question's
result (best answer, its score, the compute: tokens generated and read, PRM sequences) is stored too. The
prediction is the best finished answer's text (a search that finished none is a recorded failure VLMEvalKit
retries on the next run).
"""

from __future__ import annotations

import os

from vlmeval.inference import FAIL_MSG
from vlmeval.vlm.base import BaseModel

from vlmeval_prm.constants import DEFAULT_PRM_SPEC, DEFAULT_STEP_PROMPT, MAX_STEPS, SPEC_ENV
from vlmeval_prm.host.bon import SEEDED_SAMPLING, sample_key
from vlmeval_prm.host.plugin import search_name
from vlmeval_prm.host.run_context import store_path
from vlmeval_prm.loading import message_parts
from vlmeval_prm.logs import get_logger
from vlmeval_prm.policy.build import build_base
from vlmeval_prm.policy.step_extension import step_policy_for
from vlmeval_prm.search import SearchConfig, search_method
from vlmeval_prm.search.base import ExpansionLog
from vlmeval_prm.store import search_log
from vlmeval_prm.store.scoring import StoreScoring

log = get_logger(__name__)


class PRMSearch(BaseModel):
    """Search over any model whose step extension the plugin drives (see the module docstring). ``n``: the
    generation budget per depth; ``width``: beams kept (beam) or subtrees (DVTS); search-and-learn's
    ``iterations``, ``filter_duplicates`` and ``aggregate`` (``last``)."""

    def __init__(
        self,
        model,
        method: str = "beam",
        n: int = 8,
        width: int = 2,
        iterations: int = 40,
        filter_duplicates: bool = True,
        aggregate: str = "last",
        prm: str | None = None,
        prm_options: dict | None = None,
        temperature: float = 0.7,
        top_p: float = 0.95,
        max_step_tokens: int = 128,
        step_prompt: str = DEFAULT_STEP_PROMPT,
        max_steps: int = MAX_STEPS,
        name: str | None = None,
        **base_kwargs,
    ):
        super().__init__()
        self.method, self.run = method, search_method(method)  # an unknown method fails here
        self.config = SearchConfig(n, width, iterations, 0, filter_duplicates, aggregate)
        self.prm_spec = prm or os.environ.get(SPEC_ENV) or DEFAULT_PRM_SPEC
        self.scoring = StoreScoring(self.prm_spec, prm_options, max_steps, aggregate)  # a bad spec fails here
        self.step_prompt = step_prompt
        base_name = model if isinstance(model, str) else model.get("class", "custom")
        self.name = name or search_name(base_name, method, width, n)
        self.base = build_base(model, **base_kwargs)
        self.policy = step_policy_for(self.base, temperature, top_p, max_step_tokens)

    def generate_inner(self, message, dataset=None):
        question, images = message_parts(message)
        prompt = f"{question}\n{self.step_prompt}" if self.step_prompt else question
        key = sample_key(dataset, message)
        path = search_log.search_file(store_path(self.name, dataset))
        lines = search_log.read_lines(path)
        stored = search_log.expansions(lines, key)
        expansions = ExpansionLog(
            stored, on_append=lambda e: search_log.append(path, search_log.expansion_record(key, e))
        )
        try:
            with SEEDED_SAMPLING:  # one seeded sampling at a time in a process (see host.bon)
                result = self.run(prompt, images, self.policy, self.scoring.scorer, self.config, expansions)
        except Exception as exc:  # a failed request or generate: recorded, retried by VLMEvalKit's next run
            log.warning("%s: the search of sample %s failed: %s: %s", self.name, key, type(exc).__name__, exc)
            return f"{FAIL_MSG} vlmeval-prm: the {self.method} search failed: {type(exc).__name__}: {exc}"
        best = result.best(self.config.aggregate)
        search_log.append(
            path,
            {
                "kind": "result",
                "key": key,
                "method": self.method,
                "config": self.config.__dict__,
                "best": best.steps if best else None,
                "value": best.value(self.config.aggregate) if best else None,
                "finished": len(result.finished),
                "replayed": len(stored),
                "compute": result.compute.__dict__,
            },
        )
        if best is None:
            log.warning("%s: the search of sample %s finished no scored answer; VLMEvalKit retries it", self.name, key)
            return f"{FAIL_MSG} vlmeval-prm: the {self.method} search finished no scored answer"
        return "".join(best.steps).strip()
