"""VL-PRM-3B/7B (AI Singapore, arXiv 2509.23250; Qwen2.5-VL): the conversation its scoring code builds.

Read from Tej-Deep/mmr-eval at aa314a6a2ae074f45ee3f6325c5689d307c4158f
(``eval/tts_eval/reward_guided_search/VisualPRMv2.py``, ``VisualPRM.get_reward``; ``prompts.py``; the
repository the model card links, theogbrand/vlprm 27babae, holds the same files):

- system turn ``PRM_SYSTEM_PROMPT_NORMAL_TOK_V2`` (the second of its two definitions in ``prompts.py``,
  which is the one Python keeps; it equals the training prompt);
- first user turn: the image, then ``### Question:\\n{question}\\n\\n### Solution Process:\\n{step_1}``
  (no line break between them); every later user turn the raw next step; every earlier step followed by
  an assistant "+";
- a step's score: softmax over the logits of "+" and "-" at the last position after the generation
  prompt, one forward pass per step. Causal attention makes that the logit before each assistant "+" of
  the whole conversation, which the backends read in one pass (tests/test_format_vl_prm.py checks it
  against the per-step passes);
- steps as its step-level search produces them: generation stops at ``"\\n\\n"``, kept on every step
  but the last;
- images resized twice: ``qwen_vl_utils`` (0.0.11, pinned by its ``eval/requirements.txt``) to a multiple
  of 28 within [4, 16384] x 28 x 28 pixels, RGBA composited on white, then the processor within
  ``min_pixels=256*28*28``, ``max_pixels=1280*28*28``.

Its code shows the first image only (all benchmarks but MMMU); this format shows every image, in order,
before the question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from vlmeval_prm.prm.conversation import IMAGE, Turn
from vlmeval_prm.prm.formats.base import PRMFormat

# Verbatim from Tej-Deep/mmr-eval eval/tts_eval/reward_guided_search/prompts.py, lines 199-218 (note the two
# spaces that end "first solution step."); sha256 c45b74bef0d6afde015dbfa30fc2ed476fb63a5516a99a6fee6c69390911bb5f.
VL_PRM_SYSTEM_PROMPT = (
    "**You are a process supervision model for visual reasoning tasks. You will receive an image and an "
    "image-based problem statement, followed by solution steps to evaluate.**\n\n"
    "First round: problem statement and first solution step.  \nSubsequent rounds: one new step per round.\n\n"
    "Assess the cumulative correctness of the entire solution up to each step.\n\n"
    "## Evaluation Criteria:\n\n"
    "1. **Visual Accuracy**: Are visual elements from the image correctly identified (shapes, colors, positions, "
    "quantities, spatial relationships)?\n\n"
    "2. **Logical Validity**: Do all inferences and calculations follow correctly from the image and previous "
    "steps?\n\n"
    '## Response:\n- **"+"** if correct up to this step\n- **"-"** if any error exists up to this step\n\n'
    'Only respond with "+" or "-". No explanations.\n\n'
    "An error in any step invalidates all subsequent steps."
)
#: qwen_vl_utils 0.0.11 ``fetch_image``: IMAGE_FACTOR, MIN_PIXELS, MAX_PIXELS.
FIRST_RESIZE = {"factor": 28, "min_pixels": 4 * 28 * 28, "max_pixels": 16384 * 28 * 28}


@dataclass(frozen=True)
class VLPRMFormat(PRMFormat):
    name = "vl-prm"
    #: Its processor settings (``AutoProcessor.from_pretrained(..., min_pixels=..., max_pixels=...)``).
    processor_kwargs: ClassVar[dict] = {"min_pixels": 256 * 28 * 28, "max_pixels": 1280 * 28 * 28}
    #: Rendered by the checkpoint's own (Qwen2.5-VL) chat template: in process, or by a vLLM server.
    backends = ("transformers", "vllm")
    system_prompt: str | None = VL_PRM_SYSTEM_PROMPT

    def conversation(self, question: str, steps: Sequence[str], n_images: int) -> list[Turn]:
        if not steps:
            raise ValueError("a candidate with no steps cannot be scored")
        turns = [Turn("system", (self.system_prompt,))] if self.system_prompt else []
        last = len(steps) - 1
        for i, step in enumerate(steps):
            text = step + ("\n\n" if i < last else "")
            parts = (
                (*(IMAGE,) * n_images, f"### Question:\n{question}\n\n### Solution Process:\n{text}")
                if i == 0
                else (text,)
            )
            turns += [Turn("user", parts), Turn("assistant", (self.good_token,))]
        return turns

    def load_image(self, path: str):
        """``qwen_vl_utils.fetch_image`` as VL-PRM's code calls it: RGB on white, then resized to a
        multiple of 28 within its pixel bounds (the processor resizes again)."""
        from PIL import Image
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        with Image.open(path) as im:
            im.load()
            if im.mode == "RGBA":
                white = Image.new("RGB", im.size, (255, 255, 255))
                white.paste(im, mask=im.split()[3])
                image = white
            else:
                image = im.convert("RGB")
        height, width = smart_resize(image.height, image.width, **FIRST_RESIZE)
        return image.resize((width, height))
