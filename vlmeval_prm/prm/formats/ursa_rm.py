"""URSA-RM-8B (URSA-MATH, arXiv 2501.04686): a sigmoid head read at a step tag after each step.

Read from URSA-MATH/URSA-MATH at c4e30ff78802b90054a74ae74f3c2e9fac12aa4a (``inference/prm_infer_score.py``:
``PROMPT``, ``prepare_input``, ``replace_specific_plus_minus_with_ki``, ``single_inference``;
``models/ursa_model/modeling_ursa.py``: ``UrsaForTokenClassification``):

- system ``You are a helpful assistant.``; one user turn ``<|image|>`` + ``PROMPT`` + question + ``\\n`` +
  the tagged response, rendered by the processor's chat template with the generation prompt; no assistant
  text;
- the step tag `` и`` (space, Cyrillic i; one token, ``tokenizer.encode(' и')[0]``) goes after each step's
  last character that is not a space or a line break: before each ``Step N`` but the first, and before the
  ``†Answer:`` line;
- the model is URSA's own class (a hybrid SAM+SigLIP tower whose 576 features replace the one image token,
  a Qwen2.5-Math decoder, ``score = Linear(hidden, 1)`` on its last hidden state), loaded from URSA's package,
  not from transformers or the checkpoint; a step's score is ``sigmoid`` of the head at its tag.

Where this format departs from that code, so that every step of a Best-of-N candidate or of a
VisualProcessBench sample gets a score: a response without a ``†Answer:`` line has its last step tagged
(URSA's tagger leaves it unscored), a ``Step N`` inside the question is not tagged (URSA's tagger tags the
question too), and a question with several images gets one ``<|image|>`` per image (URSA shows one; its
model merges any number of image tokens).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from vlmeval_prm.prm.conversation import IMAGE, Turn
from vlmeval_prm.prm.formats.base import PRMFormat, single_token
from vlmeval_prm.steps import split_steps

# Verbatim: ``PROMPT`` in inference/prm_infer_score.py (no space between "Question:" and the question).
URSA_PROMPT = (
    "You are given a problem and a step-by-step solution. You need to check the correctness of each step.\nQuestion:"
)
URSA_SYSTEM_PROMPT = "You are a helpful assistant."
STEP_TAG = " и"
ANSWER_LINE = "†Answer:"
_STEP = re.compile(r"Step \d+")
#: What URSA's tagger walks back over to place a tag (not tabs).
_SKIPPED = " \n"


def tag_place(step: str) -> int:
    """Where the tag goes in one step: after its last character that is not a space or a line break,
    looking before its ``†Answer:`` line when it has one."""
    end = step.find(ANSWER_LINE)
    end = len(step) if end < 0 else end
    return len(step[:end].rstrip(_SKIPPED))


@dataclass(frozen=True)
class URSARMFormat(PRMFormat):
    name = "ursa-rm"
    backends = ("transformers",)
    marker = STEP_TAG
    head = "sigmoid"
    image_text = "<|image|>"
    #: URSA's package: the model and processor classes, as ``prm_infer_score.py`` imports them.
    model_code: ClassVar[tuple[str, str] | None] = (
        "ursa_model:UrsaForTokenClassification",
        "ursa_model:UrsaProcessor",
    )
    #: ``config.json`` ``model_type`` of URSA's checkpoints (``UrsaConfig.model_type``).
    detects = ("ursa",)
    system_prompt: str | None = URSA_SYSTEM_PROMPT
    good_token: str = ""  # read from a head, not from label tokens
    bad_token: str = ""

    def split(self, response: str | None, max_steps: int) -> list[str]:
        """URSA's steps: the response cut before each ``Step N`` but the first, whitespace kept (the pieces
        join back to the response); a piece with nothing after its ``Step N`` joins the next (URSA tags none
        there: its walk back never reaches the character right after ``Step N``). Never merged to
        ``max_steps``: the model would see every ``Step N`` anyway. Without ``Step N``: the blank-line rule."""
        if not response or not response.strip():
            return []
        starts = [m.start() for m in _STEP.finditer(response)]
        if not starts:
            return split_steps(response, max_steps)
        pieces = [response[a:b] for a, b in zip([0, *starts[1:]], [*starts[1:], len(response)])]
        steps: list[str] = []
        carry = ""
        for piece in pieces[:-1]:
            head = _STEP.search(piece)
            # URSA's walk back stops before the character right after the previous ``Step N``
            if not piece[head.end() + 1 :].strip(_SKIPPED):
                carry += piece
                continue
            steps.append(carry + piece)
            carry = ""
        return [*steps, carry + pieces[-1]]

    def tagged(self, steps: Sequence[str]) -> str:
        """The response with a tag in each step; steps that do not end in white space (a benchmark's
        stripped steps) are joined by line breaks."""
        out = []
        for i, step in enumerate(steps):
            at = tag_place(step)
            out.append(step[:at] + STEP_TAG + step[at:])
            if i < len(steps) - 1 and not step[-1:].isspace():
                out.append("\n")
        return "".join(out)

    def conversation(self, question: str, steps: Sequence[str], n_images: int) -> list[Turn]:
        if not steps:
            raise ValueError("a candidate with no steps cannot be scored")
        turns = [Turn("system", (self.system_prompt,))] if self.system_prompt else []
        instruction = f"{URSA_PROMPT}{question}\n{self.tagged(steps)}"
        return [*turns, Turn("user", (*(IMAGE,) * n_images, instruction))]

    def marker_id(self, tokenizer) -> int:
        """``tokenizer.encode(' и', add_special_tokens=False)[0]``, as ``single_inference`` reads it; it must be
        one token (it is in Qwen2's vocabulary)."""
        return single_token(tokenizer, STEP_TAG)
