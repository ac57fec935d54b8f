"""Any VLMEvalKit model as a step critic (``critic:<model>``): a generative reward model behind the PRM interface.

The judge is asked the VisualProcessBench critic prompt (``datasets/critic.py``: the images, the question, the
numbered steps, one ``+``/``-`` verdict per step) and its reply is read by the same parser. A step's score is 1.0
for a ``+`` verdict and 0.0 for a ``-``. A reply that cannot be read, or a request that fails, is a recorded
failure of that candidate (never a score); a failed request is transient (a rerun asks again).

``critic:<name>`` builds VLMEvalKit's ``supported_VLM[name]``; the option ``model`` (a ``--config``-style dict
with ``class``, e.g. ``GPT4V`` pointed at any OpenAI-compatible server) builds that instead, ``<name>`` then
naming it. API judges are asked for the N candidates of a question at once (``parallel`` at most).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from vlmeval_prm.counters import bump
from vlmeval_prm.logs import get_logger, is_secret
from vlmeval_prm.prm.base import PRMScorer, StepScores, failed, prepare
from vlmeval_prm.prm.critic import CORRECT, build_critic_prompt, parse_verdicts

log = get_logger(__name__)


def prompt_digest() -> str:
    """A fingerprint of the critic prompt (a change to its wording changes every verdict)."""
    return hashlib.sha256(build_critic_prompt("Q", ["a", "b"]).encode()).hexdigest()[:16]


def build_judge(name: str, model: dict | None):
    """The judge: ``model`` (a config dict with ``class``) if given, else ``supported_VLM[name]``."""
    from vlmeval_prm.policy.build import build_base

    return build_base(model if model is not None else name)


class CriticPRM(PRMScorer):
    """Step verdicts from a VLMEvalKit model (see the module docstring). ``parallel``: requests at once for
    an API judge (a local judge answers one at a time)."""

    concurrent = False  # a local judge is one model in this process; an API judge is parallel within score
    uses_format = False

    def __init__(self, target: str, model: dict | None = None, parallel: int = 8):
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.identity = f"critic:{target}"
        self.judge = build_judge(target, model)
        self.parallel = parallel if getattr(self.judge, "is_api", False) else 1

    @classmethod
    def identity_of(cls, target: str, options: dict) -> dict:
        """The judge (its name, its config without credentials) and the critic prompt. Not ``parallel``."""
        model = options.get("model")
        config = {k: v for k, v in model.items() if not is_secret(k)} if isinstance(model, dict) else None
        return {"backend": "critic", "judge": target, "config": config, "prompt": prompt_digest()}

    def score(
        self, question: str, images: Sequence[str], candidates: Sequence[Sequence[str]], mode: str = "step"
    ) -> list[StepScores]:
        steps_list, results = prepare(candidates, mode)
        todo = [i for i, r in enumerate(results) if r is None]
        with ThreadPoolExecutor(max_workers=min(self.parallel, max(len(todo), 1))) as pool:
            for i, res in zip(todo, pool.map(lambda i: self._judge(question, images, steps_list[i]), todo)):
                results[i] = res
        return results  # type: ignore[return-value]

    def _judge(self, question: str, images: Sequence[str], steps: list[str]) -> StepScores:
        message = [*({"type": "image", "value": p} for p in images)]
        message.append({"type": "text", "value": build_critic_prompt(question, steps)})
        bump("critic_requests")
        try:
            reply = self.judge.generate(message=message)
        except Exception as exc:  # a local model that raises: that candidate fails, the others go on
            return failed(steps, f"critic {self.identity} raised {type(exc).__name__}: {exc}", transient=True)
        reply = str(reply)
        fail_msg = getattr(self.judge, "fail_msg", None)
        if fail_msg and fail_msg in reply:
            return failed(steps, f"critic {self.identity} request failed: {reply[:200]}", transient=True)
        labels = parse_verdicts(reply, len(steps))
        if labels is None:
            short = reply if len(reply) <= 200 else reply[:200] + "..."
            return failed(steps, f"critic reply gives no verdict for every one of {len(steps)} steps: {short!r}")
        return StepScores(
            steps=steps, scores=[1.0 if label == CORRECT else 0.0 for label in labels], meta={"verdicts": reply}
        )
