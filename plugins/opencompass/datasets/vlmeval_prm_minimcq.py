# OpenCompass dataset config: vlmeval-prm's shipped 36-question image MCQ set (VLMEvalPRM_MiniMCQ),
# through OpenCompass's VLMEvalKit bridge. VLMEvalKit scores it (exact matching of the option letter, no
# judge model); its accuracy is a fraction, which the stock bridge turns into percent.
import os

from opencompass.datasets import VLMEvalKitDataset
from opencompass.evaluator import VLMEvalKitEvaluator
from opencompass.openicl.icl_inferencer import GenInferencer
from opencompass.openicl.icl_raw_prompt_template import RawPromptTemplate
from opencompass.openicl.icl_retriever import ZeroRetriever

dataset_name = "VLMEvalPRM_MiniMCQ"
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
    evaluator=dict(type=VLMEvalKitEvaluator, **vlmeval_dataset_cfg, eval_kwargs=dict(model="exact_matching", nproc=1))
)

minimcq_datasets = [
    dict(
        type=VLMEvalKitDataset,
        abbr=dataset_name,
        **vlmeval_dataset_cfg,
        reader_cfg=reader_cfg,
        infer_cfg=infer_cfg,
        eval_cfg=eval_cfg,
    )
]
