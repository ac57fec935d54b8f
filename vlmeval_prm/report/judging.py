"""Per-candidate correctness, judged by the dataset's own ``evaluate()`` so it agrees with VLMEvalKit.

For candidate index i, the run's prediction table with ``prediction`` replaced by candidate i's text
is written where VLMEvalKit would name it (``get_pred_file_path``) inside ``<cache_root>/cand_{i}/``,
evaluated with ``dataset.evaluate(file, **judge_kwargs)``, and per-row correctness is read back from
the detailed result file that evaluation writes:

- multiple choice (``TYPE`` contains "MCQ", ``ImageMCQDataset.evaluate``): ``*_<judge>_result`` with
  column ``hit`` (0/1); with ``use_verifier``, ``*_detailed_results`` with ``verifier_match``.
  Circular datasets (MMBench, CCBench, ...) are refused: their ``hit`` is per question group, not per row.
- yes/no (``TYPE`` contains "Y/N", ``ImageYORNDataset.evaluate``): ``*_auxmatch`` with ``score``.

Any other type, or a subclass whose ``evaluate`` writes no such file, raises ``UnsupportedDataset``.

Cache: ``cand_{i}/correctness.json`` holds the per-row result under a hash of the predictions, the
dataset and the judge settings; a matching hash costs no evaluation (no judge calls). On a mismatch
the folder is emptied first, because VLMEvalKit's own intermediate files there (``*_result.pkl``,
``*_auxmatch``) are keyed by row index only and would hand back verdicts on the old predictions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence

import pandas as pd
from tqdm import tqdm

#: VLMEvalKit's text for a failed inference; a candidate without text is written with it, then
#: reported as unknown (None), never as wrong.
FAIL_MSG = "Failed to obtain answer via API."
CACHE_FILE = "correctness.json"
#: judge_kwargs that do not change verdicts, left out of the cache key.
_NOT_IN_KEY = ("nproc", "verbose", "retry", "timeout")
#: ImageMCQDataset.evaluate_heuristic renames these judges in its file names (vlmeval/dataset/image_mcq.py).
_MCQ_JUDGE_NAMES = {"chatgpt-0125": "openai", "gpt-4-0125": "gpt4"}
_CIRCULAR_MARKERS = ("mmbench", "ccbench", "circular", "mmcr")  # as image_mcq.py decides circular


class UnsupportedDataset(ValueError):
    """Per-row correctness cannot be read from this dataset's evaluation."""


def _family(dataset) -> str:
    kind = str(getattr(dataset, "TYPE", ""))
    name = dataset.dataset_name
    if "MCQ" in kind.upper():
        if any(m in name.lower() for m in _CIRCULAR_MARKERS):
            raise UnsupportedDataset(
                f"{name} is evaluated circularly by VLMEvalKit: its 'hit' is per question group, so a "
                f"candidate's per-row correctness cannot be read from it")
        return "MCQ"
    if "Y/N" in kind.upper():
        return "Y/N"
    raise UnsupportedDataset(
        f"{name} has dataset type {kind!r}; BoN reports support multiple choice (MCQ) and yes/no (Y/N) "
        f"datasets, whose evaluate() writes a per-row verdict")


def _detail_source(family: str, judge_kwargs: dict) -> tuple[str, str]:
    """(suffix of the detailed result file, its per-row verdict column)."""
    if family == "Y/N":
        return "_auxmatch", "score"
    if judge_kwargs.get("use_verifier"):
        return "_detailed_results", "verifier_match"
    judge = judge_kwargs.get("model", "exact_matching")
    return f"_{_MCQ_JUDGE_NAMES.get(judge, judge)}_result", "hit"


def cache_key(dataset, indices: Sequence, predictions: Sequence[str | None], judge_kwargs: dict) -> str:
    blob = json.dumps({"dataset": dataset.dataset_name, "type": str(getattr(dataset, "TYPE", "")),
                       "rows": [[str(i), p] for i, p in zip(indices, predictions)],
                       "judge": {k: v for k, v in judge_kwargs.items() if k not in _NOT_IN_KEY}},
                      sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _read_cache(folder: str, key: str) -> list[bool | None] | None:
    try:
        with open(os.path.join(folder, CACHE_FILE), encoding="utf-8") as f:
            cached = json.load(f)
    except (OSError, ValueError):
        return None
    return cached.get("correct") if isinstance(cached, dict) and cached.get("hash") == key else None


def _write_cache(folder: str, key: str, correct: list[bool | None]) -> None:
    path = os.path.join(folder, CACHE_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"hash": key, "correct": correct}, f)
    os.replace(path + ".tmp", path)


def _verdict(value) -> bool | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "1.0")
    return bool(value)


def judge_predictions(dataset, table: pd.DataFrame, predictions: Sequence[str | None], folder: str,
                      model_name: str, judge_kwargs: dict) -> list[bool | None]:
    """Correctness of ``predictions`` (one per row of ``table``, None = no text), judged by
    ``dataset.evaluate`` in ``folder``; None where a row has no text or no verdict."""
    from vlmeval.smp import dump, get_intermediate_file_path, get_pred_file_path, load

    if len(predictions) != len(table):
        raise ValueError(f"{len(predictions)} predictions for {len(table)} rows")
    family = _family(dataset)
    if all(p is None for p in predictions):
        return [None] * len(predictions)  # nothing to judge
    key = cache_key(dataset, table["index"], predictions, judge_kwargs)
    cached = _read_cache(folder, key)
    if cached is not None:
        return cached
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    frame = table.copy()
    frame["prediction"] = [FAIL_MSG if p is None else p for p in predictions]
    eval_file = get_pred_file_path(folder, model_name, dataset.dataset_name)
    dump(frame, eval_file)
    if not os.path.exists(eval_file):  # vlmeval's dump falls back to .pkl when it cannot write the format
        raise RuntimeError(f"could not write {eval_file}; try another PRED_FORMAT (xlsx, tsv or json)")
    dataset.evaluate(eval_file, **dict(judge_kwargs))  # a copy: evaluate pops keys such as nproc
    suffix, column = _detail_source(family, judge_kwargs)
    detail_file = get_intermediate_file_path(eval_file, suffix)
    detail = load(detail_file) if os.path.exists(detail_file) else None
    if not isinstance(detail, pd.DataFrame) or column not in detail or "index" not in detail:
        raise UnsupportedDataset(
            f"{type(dataset).__name__}.evaluate() wrote no per-row '{column}' in {detail_file}; files "
            f"written: {sorted(os.listdir(folder))}")
    by_index = {str(i): _verdict(v) for i, v in zip(detail["index"], detail[column])}
    correct = [None if p is None else by_index.get(str(i)) for i, p in zip(table["index"], predictions)]
    _write_cache(folder, key, correct)
    return correct


def judge_candidates(dataset, table: pd.DataFrame, candidate_texts: Sequence[Sequence[str | None]],
                     cache_root: str, model_name: str, judge_kwargs: dict) -> list[list[bool | None]]:
    """``result[i][row]``: correctness of candidate i on each row; ``candidate_texts[i][row]`` its text.

    One evaluation per candidate index, cached in ``<cache_root>/cand_{i}/``.
    """
    _family(dataset)  # refuse before any work
    return [judge_predictions(dataset, table, texts, os.path.join(cache_root, f"cand_{i}"), model_name,
                              judge_kwargs)
            for i, texts in enumerate(tqdm(candidate_texts, desc=f"judging {dataset.dataset_name}",
                                           unit="candidate"))]
