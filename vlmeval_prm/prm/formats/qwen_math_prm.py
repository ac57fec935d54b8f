"""Qwen2.5-Math-PRM-7B/72B (text only): steps separated by ``<extra_0>``, scored by a two-class head.

From its model card (Qwen/Qwen2.5-Math-PRM-7B, README: the message layout and ``make_step_rewards``) and the
ports that load its weights (vLLM ``vllm/model_executor/models/qwen2_rm.py``, ``Qwen2ForProcessRewardModel``,
0.34.0 62d4bc3c7): system ``Please reason step by step, and put your final answer within \\boxed{}.``, the
question as the user turn, the steps joined by ``<extra_0>`` with one more after the last as the assistant
turn, rendered by the checkpoint's chat template without a generation prompt; a step's score is
``softmax(logits)[1]`` of the token-classification head (``Linear, ReLU, Linear(hidden, 2)``) at its
``<extra_0>``. A text PRM: the images of a question are not shown to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlmeval_prm.prm.conversation import Turn
from vlmeval_prm.prm.formats.base import PRMFormat

# Verbatim from the model card (its example's data["system"]).
QWEN_MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
STEP_SEPARATOR = "<extra_0>"


@dataclass(frozen=True)
class QwenMathPRMFormat(PRMFormat):
    name = "qwen-math-prm"
    backends = ("transformers", "vllm")
    marker = STEP_SEPARATOR
    head = "softmax"
    text_only = True
    #: Its card's architecture (the checkpoint's own ``Qwen2ForProcessRewardModel``).
    detects = ("Qwen2ForProcessRewardModel",)
    system_prompt: str | None = QWEN_MATH_SYSTEM_PROMPT
    good_token: str = ""  # read from a head, not from label tokens
    bad_token: str = ""

    def conversation(self, question: str, steps: Sequence[str], n_images: int) -> list[Turn]:
        if not steps:
            raise ValueError("a candidate with no steps cannot be scored")
        turns = [Turn("system", (self.system_prompt,))] if self.system_prompt else []
        return [*turns, Turn("user", (question,)), Turn("assistant", ("".join(f"{s}{STEP_SEPARATOR}" for s in steps),))]
