"""The VisualPRM scoring conversation, built once here and rendered for every backend and mode.

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

A conversation is a list of :class:`Turn`; each backend renders it its own way (a prompt string
with its image marker, HF chat messages, OpenAI chat messages), never rebuilding the wording.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

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

#: InternVL's image placeholder in a prompt; its chat code expands it to <img> + context tokens + </img>.
INTERNVL_IMAGE = "<image>"


class _Image:
    """The place of one image in a turn. Rendered with the line break that follows it in InternVL
    (``<image>\\n``): chat templates and LMDeploy's InternVL preprocessor add that break themselves."""

    def __repr__(self) -> str:
        return "IMAGE"


IMAGE = _Image()


@dataclass(frozen=True)
class Turn:
    role: str
    parts: tuple  # str or IMAGE, in order


@dataclass(frozen=True)
class ChatTemplate:
    """How the PRM's chat template frames a turn, for backends that render the prompt as text.

    The defaults are InternVL's ``internvl2_5`` conversation template, the one VisualPRM-8B uses
    (InternVL ``conversation.py``: system ``<|im_start|>system\\n{system_message}``, roles
    ``<|im_start|>user\\n`` / ``<|im_start|>assistant\\n``, MPT style, separator ``<|im_end|>\\n``),
    i.e. ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``.
    """

    turn_start: str = "<|im_start|>"
    role_end: str = "\n"
    turn_end: str = "<|im_end|>\n"

    def header(self, role: str) -> str:
        return f"{self.turn_start}{role}{self.role_end}"

    def render(self, turns: Sequence[Turn], image: str) -> str:
        """The prompt text; ``image`` is what stands for one image (e.g. ``"<image>\\n"``)."""
        return "".join(f"{self.header(t.role)}{_text(t, image)}{self.turn_end}" for t in turns)


#: InternVL conversation-template names (``config.template`` of a remote-code checkpoint) we can render.
TEMPLATES = {"internvl2_5": ChatTemplate()}


def chat_template(spec: str | dict | ChatTemplate | None) -> ChatTemplate:
    """A template from a name in ``TEMPLATES``, a dict of ``ChatTemplate`` fields, or None (internvl2_5)."""
    if spec is None:
        return TEMPLATES["internvl2_5"]
    if isinstance(spec, ChatTemplate):
        return spec
    if isinstance(spec, str):
        if spec not in TEMPLATES:
            raise ValueError(
                f"unknown PRM chat template {spec!r}; use one of {sorted(TEMPLATES)} or a dict "
                f"with the fields {[f.name for f in fields(ChatTemplate)]}"
            )
        return TEMPLATES[spec]
    unknown = set(spec) - {f.name for f in fields(ChatTemplate)}
    if unknown:
        raise ValueError(
            f"unknown chat template fields {sorted(unknown)}; expected {[f.name for f in fields(ChatTemplate)]}"
        )
    return ChatTemplate(**spec)


@dataclass(frozen=True)
class PRMFormat:
    """What the PRM is shown. ``system_prompt=None`` sends no system turn; ``template`` frames turns
    where a backend renders text itself (a served /generate prompt, a remote-code checkpoint)."""

    system_prompt: str | None = PRM_SYSTEM_PROMPT
    good_token: str = "+"
    bad_token: str = "-"
    template: ChatTemplate = field(default_factory=ChatTemplate)


def image_parts(n_images: int) -> tuple:
    """One placeholder per image, in order; labelled ``Image-k: `` when there are several."""
    if n_images <= 1:
        return (IMAGE,) * n_images
    return tuple(p for k in range(n_images) for p in (f"Image-{k + 1}: ", IMAGE))


def build_conversation(question: str, steps: Sequence[str], n_images: int, fmt: PRMFormat) -> list[Turn]:
    """System turn, then per step a user turn and the assistant "+" whose probability is its score."""
    if not steps:
        raise ValueError("a candidate with no steps cannot be scored")
    turns = [Turn("system", (fmt.system_prompt,))] if fmt.system_prompt else []
    for i, step in enumerate(steps):
        parts = (
            ("### Question:\n", *image_parts(n_images), f"{question}\n\n### Solution Process:\n{step}")
            if i == 0
            else (step,)
        )
        turns += [Turn("user", parts), Turn("assistant", (fmt.good_token,))]
    return turns


def render_prompt(
    question: str, steps: Sequence[str], n_images: int, fmt: PRMFormat, image: str = INTERNVL_IMAGE + "\n"
) -> str:
    """The whole scoring conversation as text in ``fmt.template``."""
    return fmt.template.render(build_conversation(question, steps, n_images, fmt), image)


def build_messages(question: str, steps: Sequence[str], n_images: int, fmt: PRMFormat) -> list[dict]:
    """HF chat messages (content parts) for ``processor.apply_chat_template``."""
    return [
        {"role": t.role, "content": [{"type": "image"} if p is IMAGE else {"type": "text", "text": p} for p in t.parts]}
        for t in build_conversation(question, steps, n_images, fmt)
    ]


def chat_messages(turns: Sequence[Turn], image_urls: Sequence[str]) -> list[dict]:
    """OpenAI chat messages: a turn with images becomes text and image_url parts in their order
    (LMDeploy's InternVL preprocessor renders each image part as ``<img>...</img>\\n`` in place)."""
    urls = iter(image_urls)
    out = []
    for t in turns:
        if any(p is IMAGE for p in t.parts):
            content = [
                {"type": "image_url", "image_url": {"url": next(urls)}} if p is IMAGE else {"type": "text", "text": p}
                for p in t.parts
            ]
        else:
            content = "".join(t.parts)
        out.append({"role": t.role, "content": content})
    return out


def _text(turn: Turn, image: str) -> str:
    return "".join(image if p is IMAGE else p for p in turn.parts)
