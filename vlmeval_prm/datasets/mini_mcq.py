"""``VLMEvalPRM_MiniMCQ``: 36 rendered-shape MCQs shipped in the package, for offline demos and tests."""

from __future__ import annotations

import os
import shutil
from importlib.resources import files

from vlmeval.dataset.image_mcq import ImageMCQDataset
from vlmeval.smp import LMUDataRoot, load, md5

MINI_MCQ = "VLMEvalPRM_MiniMCQ"


class VLMEvalPRMMiniMCQ(ImageMCQDataset):
    DATASET_URL = {MINI_MCQ: ""}

    def load_data(self, dataset):
        """Copy the shipped TSV into ``$LMUData`` (VLMEvalKit reads images from there), never download."""
        shipped = str(files("vlmeval_prm") / "data" / f"{MINI_MCQ}.tsv")
        self.data_path = os.path.join(LMUDataRoot(), f"{MINI_MCQ}.tsv")
        if not os.path.exists(self.data_path) or md5(self.data_path) != md5(shipped):
            os.makedirs(LMUDataRoot(), exist_ok=True)
            shutil.copyfile(shipped, self.data_path)
        return load(self.data_path)
