# OpenCompass dataset config: VisualProcessBench (VisualPRM, arXiv 2503.10291) through OpenCompass's
# VLMEvalKit bridge. The served model answers the critic prompt (one "Step k: +/-" verdict per step);
# VLMEvalKit's side (vlmeval-prm's dataset) parses the verdicts and reports macro F1 per data_source and
# Overall, in percent. The stock bridge would multiply that (and the sample counts) by 100, so the
# evaluator is vlmeval-prm's AsReportedVLMEvalKitEvaluator, which keeps the dataset's units.
#
# The release is found through VISUALPROCESSBENCH_ROOT or $LMUData/VisualProcessBench/ (see the README).
# VLMEVAL_PRM_VPB_NAME=VisualProcessBench_MINI picks the quick subset (first 20 samples per source).
import os

from opencompass.datasets import VLMEvalKitDataset
from opencompass.openicl.icl_inferencer import GenInferencer
from opencompass.openicl.icl_raw_prompt_template import RawPromptTemplate
from opencompass.openicl.icl_retriever import ZeroRetriever

from vlmeval_prm.host.opencompass_eval import AsReportedVLMEvalKitEvaluator

dataset_name = os.environ.get("VLMEVAL_PRM_VPB_NAME", "VisualProcessBench")
vlmeval_dataset_cfg = dict(
    dataset_name=dataset_name,
    data_root=os.getenv("LMUData"),  # None: VLMEvalKit's default, ~/LMUData
    dataset_kwargs=dict(),
    sample_limit=None,
)

reader_cfg = dict(input_columns=["prompt"], output_column="answer")

infer_cfg = dict(
    prompt_template=dict(type=RawPromptTemplate, messages=[dict(expand_column="prompt")], format_variables=False),
    retriever=dict(type=ZeroRetriever),
    inferencer=dict(type=GenInferencer),
)

eval_cfg = dict(
    evaluator=dict(type=AsReportedVLMEvalKitEvaluator, **vlmeval_dataset_cfg, eval_kwargs=dict(kind="critic"))
)

visualprocessbench_datasets = [
    dict(
        type=VLMEvalKitDataset,
        abbr=dataset_name,
        **vlmeval_dataset_cfg,
        reader_cfg=reader_cfg,
        infer_cfg=infer_cfg,
        eval_cfg=eval_cfg,
    )
]
