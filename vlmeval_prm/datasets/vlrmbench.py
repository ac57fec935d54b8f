"""VLRMBench (VLMEvalKit's ``VLRMBench`` dataset) read for a reward model that scores steps.

VLMEvalKit shows a model each row's ``question``: the benchmark's whole task prompt, written by its authors'
templates (JCruan519/VLRMBench ``model_eval/eval_prompt_files.py``): ``## Question``, then the reasoning to
judge under ``## AI assistant's reasoning process`` (steps written ``STEP1: ...``; the step tasks),
``## AI Assistant's Partial Reasoning Process`` (``foresight``), or ``## AI Assistant's Response 1`` and
``2`` (``multi_solution``). This module takes a prompt apart into what a PRM is given; the answers it writes
are the ones VLMEvalKit's ``VLRMBench.evaluate`` reads (ms-vlmeval 0.0.20 ``vlmeval/dataset/vlrmbench.py``):
one 0/1 error indicator per step, ``Yes``/``No``, two 0-10 scores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: VLMEvalKit's VLRMBench dataset names (``VLRMBench.DATASET_URL``).
VLRMBENCH_DATASETS = ("VLRMBench", "VLRMBench_MultiSolution", "VLRMBench_Foresight")
_SECTION = re.compile(r"^## (?P<title>[^\n]+)\n", re.MULTILINE)
_STEP = re.compile(r"STEP\s*\d+\s*:\s*", re.IGNORECASE)


def sections(prompt: str) -> dict[str, str]:
    """The prompt's ``## Title`` sections, by lower-cased title, their text stripped."""
    found = list(_SECTION.finditer(prompt))
    ends = [m.start() for m in found[1:]] + [len(prompt)]
    return {m["title"].strip().rstrip(":").lower(): prompt[m.end() : end].strip() for m, end in zip(found, ends)}


def steps_of(process: str) -> list[str]:
    """The steps of a ``STEP1: ... STEP2: ...`` reasoning process, their markers dropped."""
    return [s.strip() for s in _STEP.split(process)[1:]]


@dataclass(frozen=True)
class VLRMTask:
    """What one VLRMBench row asks a PRM: ``kind`` "steps" (which steps are wrong), "foresight" (will this
    partial reasoning end right) or "pair" (score two responses); the question, and the steps or the two
    responses."""

    kind: str
    question: str
    steps: list[str] | None = None
    pair: list[str] | None = None


def vlrm_task(prompt: str, category: str) -> VLRMTask:
    """The task in a VLRMBench prompt; ValueError naming what is missing."""
    parts = sections(prompt)
    question = parts.get("question")
    if question is None:
        raise ValueError("the VLRMBench prompt has no '## Question' section")
    if category == "multi_solution":
        pair = [parts.get(f"ai assistant's response {k}") for k in (1, 2)]
        if None in pair:
            raise ValueError("the multi_solution prompt lacks '## AI Assistant's Response 1' or '2'")
        return VLRMTask("pair", question, pair=pair)
    title = (
        "ai assistant's partial reasoning process" if category == "foresight" else "ai assistant's reasoning process"
    )
    steps = steps_of(parts.get(title, ""))
    if not steps:
        raise ValueError(f"no 'STEPk:' steps under '## {title}' in the VLRMBench prompt")
    return VLRMTask("foresight" if category == "foresight" else "steps", question, steps=steps)


def answer(task: VLRMTask, scores: list[list[float]], threshold: float, aggregate) -> str:
    """The answer VLRMBench's evaluation reads, from the PRM's step scores (P(correct)): per step 1 (an
    error: P <= ``threshold``) or 0; ``Yes`` when the partial reasoning's aggregate is above ``threshold``;
    two integer scores, 100 x each response's aggregate (its evaluation reads integers and compares sums,
    so a scale finer than the prompt's 0-10 only makes ties rarer)."""
    if task.kind == "steps":
        return str([int(p <= threshold) for p in scores[0]])
    if task.kind == "foresight":
        return "Yes" if aggregate(scores[0]) > threshold else "No"
    return str([round(100 * aggregate(s)) for s in scores])
