"""OpenCompass's VLMEvalKit bridge for datasets whose ``evaluate()`` already reports final units.

OpenCompass 0.5.4's ``VLMEvalKitEvaluator`` (opencompass/evaluator/vlmevalkit.py, ``_convert_metrics``)
multiplies every number a VLMEvalKit dataset returns by 100: right for VLMEvalKit's MCQ accuracy (a
fraction), wrong for VisualProcessBench, whose table holds macro F1 already in percent next to counts
(samples, failed, steps) and P(+) thresholds. Through the stock bridge an F1 of 62.0 would read 6200
and 8 samples 800. This evaluator reports every number as the dataset does.

Needs ``opencompass``: only the OpenCompass configs in ``plugins/opencompass`` import it, in the
environment ``plugins/opencompass/install.sh`` builds.
"""

from __future__ import annotations

from numbers import Number

import pandas as pd
from opencompass.evaluator import VLMEvalKitEvaluator
from opencompass.registry import ICL_EVALUATORS


@ICL_EVALUATORS.register_module()
class AsReportedVLMEvalKitEvaluator(VLMEvalKitEvaluator):
    """``VLMEvalKitEvaluator`` without the x100: metrics keep the dataset's own units."""

    @staticmethod
    def _convert_metrics(dataset, raw_metrics):
        from vlmeval.smp.status_report import flatten_summary_metrics  # as the stock bridge: vlmeval loads late

        flattened = flatten_summary_metrics(raw_metrics)
        primary = dataset.report_primary_metric(flattened)
        metrics = {
            str(k): float(v) for k, v in {**flattened, **primary}.items() if isinstance(v, Number) and not pd.isna(v)
        }
        if not metrics:
            raise ValueError("VLMEvalKit evaluate() returned no numeric metrics.")
        return metrics, flattened, primary
