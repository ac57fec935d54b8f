"""``VLMEvalPRM_Shapes``: the held-out split of the demo's synthetic counting task (``vlmeval_prm.demo.task``),
as a VLMEvalKit MCQ dataset (options A-E, judged by VLMEvalKit's own MCQ evaluation).

The TSV is generated, not shipped or downloaded: every row is a pure function of its index, so
``load_data`` writes it into ``$LMUData`` when it is missing or differs from what this version generates.
"""

from __future__ import annotations

import os

from vlmeval.dataset.image_mcq import ImageMCQDataset
from vlmeval.smp import LMUDataRoot, encode_image_to_base64, load

from vlmeval_prm.demo.task import make_problem, options, problem_image

SHAPES = "VLMEvalPRM_Shapes"
#: Held-out questions in the demo's dataset (test split indices 0..TEST_SIZE-1); the models never train on them.
TEST_SIZE = 100


def shapes_tsv(size: int = TEST_SIZE) -> str:
    """The dataset as TSV text: index, image (base64 PNG), question, A-E, answer, category."""
    header = ["index", "image", "question", *options(), "answer", "category"]
    lines = ["\t".join(header)]
    for i in range(size):
        p = make_problem("test", i)
        kind = "both" if p.question.colour and p.question.shape else "colour" if p.question.colour else "shape"
        image = encode_image_to_base64(problem_image(p), fmt="PNG")
        lines.append("\t".join([str(i), image, p.question.text(), *options().values(), p.answer, kind]))
    return "\n".join(lines) + "\n"


class VLMEvalPRMShapes(ImageMCQDataset):
    DATASET_URL = {SHAPES: ""}

    def load_data(self, dataset):
        """Write the generated TSV into ``$LMUData`` (VLMEvalKit reads images from there), never download."""
        text = shapes_tsv()
        self.data_path = os.path.join(LMUDataRoot(), f"{SHAPES}.tsv")
        current = None
        if os.path.exists(self.data_path):
            with open(self.data_path, encoding="utf-8") as f:
                current = f.read()
        if current != text:
            os.makedirs(LMUDataRoot(), exist_ok=True)
            with open(self.data_path, "w", encoding="utf-8") as f:
                f.write(text)
        return load(self.data_path)
