"""VisualPRM-8B (and -v1.1): the conversation it was trained on.

VisualPRM-8B was trained on conversations built by InternVL's ``item2conv_prm``
(OpenGVLab/InternVL ``internvl_chat/tools/reasoning_data_pipeline/visualprm_data_pipeline_postprocess.py``):
the system turn is ``PRM_SYSTEM_PROMPT``; the first user turn is
``### Question:\\n{question}\\n\\n### Solution Process:\\n{step_1}``; every later user turn is the raw
next step; every assistant turn is "+" (or "-"). The image placeholder belongs to the question:
InternVL's chat code prepends ``<image>\\n`` to the question before wrapping it
(``InternVLRewardModel.generate_steps_with_soft_score`` in VisualPRM-8B's ``modeling_internvl_chat.py``),
so it sits right after ``### Question:\\n``. Several images get one labelled placeholder each, in
order, as InternVL's chat and VLMEvalKit's InternVL wrapper write them
(``Image-1: <image>\\nImage-2: <image>\\n``, ``reorganize_prompt`` in ``vlmeval/vlm/internvl/utils.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from vlmeval_prm.prm.conversation import Turn, image_parts
from vlmeval_prm.prm.formats.base import PRMFormat

# Verbatim from OpenGVLab/InternVL internvl_chat/tools/reasoning_data_pipeline/utils/constants.py
# (the system turn of every VisualPRM400K training conversation).
PRM_SYSTEM_PROMPT = """
You are an advanced AI assistant, designed to serve as a process supervision model. In this task, I will provide a problem statement followed by the first step of the solution process. For each subsequent turn, I will give you a new step in the solution. Your role is to assess whether the solution process is correct up to the current step.

- In the **first round**, I will input the problem and the first step of the solution process.
- In **each subsequent round**, I will provide the next step in the solution.

For each step, you should:

- Respond with **"+"** if you believe the solution process is correct up to this step.
- Respond with **"-"** if you detect any issues or errors in the process up to this step.

Please note:
- Only respond with **"+"** or **"-"**. Do not provide any additional explanations, comments, or justifications.

Your task is to verify the accuracy and correctness of each step in the given solution process.
""".strip()  # noqa: E501


@dataclass(frozen=True)
class VisualPRMFormat(PRMFormat):
    name = "visualprm"
    system_prompt: str | None = PRM_SYSTEM_PROMPT

    def conversation(self, question: str, steps: Sequence[str], n_images: int) -> list[Turn]:
        """System turn, then per step a user turn and the assistant "+" whose probability is its score."""
        if not steps:
            raise ValueError("a candidate with no steps cannot be scored")
        turns = [Turn("system", (self.system_prompt,))] if self.system_prompt else []
        for i, step in enumerate(steps):
            parts = (
                ("### Question:\n", *image_parts(n_images), f"{question}\n\n### Solution Process:\n{step}")
                if i == 0
                else (step,)
            )
            turns += [Turn("user", parts), Turn("assistant", (self.good_token,))]
        return turns

    def identity(self) -> dict:
        """The fields alone, as scores were keyed before formats had names: stores written then keep
        their scores (the default format)."""
        return asdict(self)
