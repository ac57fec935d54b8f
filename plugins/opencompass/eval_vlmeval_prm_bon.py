# OpenCompass eval config: the served Best-of-N model (models/vlmeval_prm_bon.py) on vlmeval-prm's
# datasets through OpenCompass's VLMEvalKit bridge: the mini MCQ set and VisualProcessBench.
#
#   vlmeval-prm serve --demo --port 8000 &                       # or --model <name>-BoN8
#   .venv-opencompass/bin/opencompass plugins/opencompass/eval_vlmeval_prm_bon.py -w outputs/opencompass
#
# The summary lands in <work dir>/<timestamp>/summary/.
from mmengine.config import read_base

with read_base():
    from .datasets.visualprocessbench import visualprocessbench_datasets
    from .datasets.vlmeval_prm_minimcq import minimcq_datasets
    from .models.vlmeval_prm_bon import models  # noqa: F401

datasets = [*minimcq_datasets, *visualprocessbench_datasets]
