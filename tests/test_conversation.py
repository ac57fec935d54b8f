"""Golden tests: the PRM conversation is VisualPRM-8B's training format, byte for byte.

Sources: InternVL ``internvl_chat/tools/reasoning_data_pipeline/utils/constants.py``
(``PRM_SYSTEM_PROMPT``), ``.../visualprm_data_pipeline_postprocess.py`` (``item2conv_prm``: first
user turn ``### Question:\\n{question}\\n\\n### Solution Process:\\n{step}``, one user turn per later
step, assistant "+"), VisualPRM-8B's ``generate_steps_with_soft_score`` (``<image>\\n`` prepended to the
question), InternVL's ``internvl2_5`` conversation template (ChatML), and VLMEvalKit's
``reorganize_prompt`` for several images (``Image-k: <image>\\n``).
"""

import hashlib

import pytest

from vlmeval_prm.prm.conversation import chat_messages, chat_template
from vlmeval_prm.prm.formats.visualprm import PRM_SYSTEM_PROMPT, VisualPRMFormat

SYSTEM_TURN = (
    "<|im_start|>system\n"
    "You are an advanced AI assistant, designed to serve as a process supervision model. In this task, I will "
    "provide a problem statement followed by the first step of the solution process. For each subsequent turn, I "
    "will give you a new step in the solution. Your role is to assess whether the solution process is correct up "
    "to the current step.\n"
    "\n"
    "- In the **first round**, I will input the problem and the first step of the solution process.\n"
    "- In **each subsequent round**, I will provide the next step in the solution.\n"
    "\n"
    "For each step, you should:\n"
    "\n"
    '- Respond with **"+"** if you believe the solution process is correct up to this step.\n'
    '- Respond with **"-"** if you detect any issues or errors in the process up to this step.\n'
    "\n"
    "Please note:\n"
    '- Only respond with **"+"** or **"-"**. Do not provide any additional explanations, comments, or '
    "justifications.\n"
    "\n"
    "Your task is to verify the accuracy and correctness of each step in the given solution process."
    "<|im_end|>\n"
)

ONE_IMAGE = SYSTEM_TURN + (
    "<|im_start|>user\n### Question:\n<image>\nWhat is the area of the square?\n\n### Solution Process:\n"
    "The side is 3.<|im_end|>\n"
    "<|im_start|>assistant\n+<|im_end|>\n"
    "<|im_start|>user\nSo the area is 3 * 3 = 9.<|im_end|>\n"
    "<|im_start|>assistant\n+<|im_end|>\n"
)

TWO_IMAGES = SYSTEM_TURN + (
    "<|im_start|>user\n### Question:\nImage-1: <image>\nImage-2: <image>\nWhich is larger?\n\n"
    "### Solution Process:\nThe first is 2 cm wide.<|im_end|>\n"
    "<|im_start|>assistant\n+<|im_end|>\n"
    "<|im_start|>user\nThe second is 3 cm wide.<|im_end|>\n"
    "<|im_start|>assistant\n+<|im_end|>\n"
    "<|im_start|>user\nAnswer: the second.<|im_end|>\n"
    "<|im_start|>assistant\n+<|im_end|>\n"
)


def test_system_prompt_is_internvls_verbatim():
    assert PRM_SYSTEM_PROMPT.startswith(
        "You are an advanced AI assistant, designed to serve as a process supervision model."
    )
    assert (
        hashlib.sha256(PRM_SYSTEM_PROMPT.encode()).hexdigest()
        == "18279fe8e6c5f76aebb619b266e665b89b2d0b1cb181b6aa3fded44d24b8fa1e"
    )
    assert VisualPRMFormat().system_prompt == PRM_SYSTEM_PROMPT


def test_golden_one_image():
    got = VisualPRMFormat().render(
        "What is the area of the square?", ["The side is 3.", "So the area is 3 * 3 = 9."], 1
    )
    assert got == ONE_IMAGE


def test_golden_two_images():
    steps = ["The first is 2 cm wide.", "The second is 3 cm wide.", "Answer: the second."]
    assert VisualPRMFormat().render("Which is larger?", steps, 2) == TWO_IMAGES


@pytest.mark.parametrize("n_images, golden", [(1, ONE_IMAGE), (2, TWO_IMAGES)])
def test_the_prms_own_hf_chat_template_renders_the_same_text(tiny_paths, n_images, golden):
    """The tiny PRM's own chat template (ChatML, image part -> <IMG_CONTEXT>\\n) gives the same bytes."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_paths["prm"])
    question, steps = (
        ("What is the area of the square?", ["The side is 3.", "So the area is 3 * 3 = 9."])
        if n_images == 1
        else ("Which is larger?", ["The first is 2 cm wide.", "The second is 3 cm wide.", "Answer: the second."])
    )
    hf = processor.apply_chat_template(VisualPRMFormat().messages(question, steps, n_images), tokenize=False)
    assert hf == golden.replace("<image>", "<IMG_CONTEXT>")


def test_openai_messages_keep_the_image_inside_the_question():
    turns = VisualPRMFormat().conversation("Which is larger?", ["a", "b"], 2)
    messages = chat_messages(turns, ["data:A", "data:B"])
    assert messages[0] == {"role": "system", "content": PRM_SYSTEM_PROMPT}
    assert messages[1]["content"] == [
        {"type": "text", "text": "### Question:\n"},
        {"type": "text", "text": "Image-1: "},
        {"type": "image_url", "image_url": {"url": "data:A"}},
        {"type": "text", "text": "Image-2: "},
        {"type": "image_url", "image_url": {"url": "data:B"}},
        {"type": "text", "text": "Which is larger?\n\n### Solution Process:\na"},
    ]
    assert messages[2:] == [
        {"role": "assistant", "content": "+"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "+"},
    ]


def test_system_prompt_and_template_are_configurable():
    fmt = VisualPRMFormat(system_prompt=None, template=chat_template({"turn_start": "<s>", "turn_end": "</s>"}))
    assert fmt.render("Q", ["a"], 0) == "<s>user\n### Question:\nQ\n\n### Solution Process:\na</s><s>assistant\n+</s>"
    other = VisualPRMFormat(system_prompt="Judge each step.").render("Q", ["a"], 0)
    assert other.startswith("<|im_start|>system\nJudge each step.<|im_end|>\n")
    with pytest.raises(ValueError, match="unknown chat template fields"):
        chat_template({"turn_begin": "x"})
    with pytest.raises(ValueError, match="no steps"):
        VisualPRMFormat().conversation("Q", [], 1)
