"""Per-candidate correctness, by VLMEvalKit's own scoring, so the report agrees with VLMEvalKit.

Two paths, chosen by the dataset:

- the paper's seven benchmarks and circular multiple choice (a ``benchmarks`` registry entry): every
  distinct (question row, candidate text) goes through the benchmark's VLMEvalKit per-row function
  once (its rule-based pre-check first, the judge only where the rules fail), in parallel with a
  progress bar over judge calls. Results go to the judge cache beside the candidate store
  (``judge_cache``) with the verdict of VLMEvalKit's own check on that result, so a second report
  makes no judge call. A judge that fails on an item (API failure, or VLMEvalKit's retries ran out)
  leaves that candidate unscored (None), never wrong, and is asked again by the next report.
- any other dataset of type MCQ or Y/N: ``dataset.evaluate()`` on one prediction file per candidate
  index (below).

Evaluate path. For candidate index i, the run's prediction table with ``prediction`` replaced by
candidate i's text is written where VLMEvalKit would name it (``get_pred_file_path``) inside
``<cache_root>/cand_{i}/``, evaluated with ``dataset.evaluate(file, **judge_kwargs)``, and per-row
correctness is read back from the detailed result file that evaluation writes:

- multiple choice (``TYPE`` contains "MCQ", ``ImageMCQDataset.evaluate``): ``*_<judge>_result`` with
  column ``hit`` (0/1); with ``use_verifier``, ``*_detailed_results`` with ``verifier_match``.
  Circular datasets (MMBench, CCBench, ...) go through the registry: their ``hit`` is per question group.
- yes/no (``TYPE`` contains "Y/N", ``ImageYORNDataset.evaluate``): ``*_auxmatch`` with ``score``.

Any other type, or a subclass whose ``evaluate`` writes no such file, raises ``UnsupportedDataset``.
Cache: ``cand_{i}/correctness.json`` holds the per-row result under a hash of the predictions, the
dataset and the judge settings; a matching hash costs no evaluation (no judge calls). On a mismatch
the folder is emptied first, because VLMEvalKit's own intermediate files there (``*_result.pkl``,
``*_auxmatch``) are keyed by row index only and would hand back verdicts on the old predictions.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import pandas as pd
from tqdm import tqdm

from vlmeval_prm.counters import bump
from vlmeval_prm.logs import get_logger
from vlmeval_prm.report.benchmarks import FAIL_MSG, Benchmark, VoteContext, find_benchmark
from vlmeval_prm.report.judge_cache import (
    JudgeCache,
    Judged,
    item_key,
    judge_cache_file,
    judge_identity,
    row_digest,
)

log = get_logger(__name__)
#: The judge setting meaning "no LLM judge": VLMEvalKit's rule-only mode.
EXACT_MATCHING = "exact_matching"
DEFAULT_JUDGE_NPROC = 4
#: VLMEvalKit loggers that print judge settings (OpenAIWrapper logs its API key at INFO): quiet
#: while the judge is built, so no key reaches a log.
_CHATTY_LOGGERS = ("vlmeval.api.gpt", "vlmeval.api.base")
CACHE_FILE = "correctness.json"
#: ImageMCQDataset.evaluate_heuristic renames these judges in its file names (vlmeval/dataset/image_mcq.py).
_MCQ_JUDGE_NAMES = {"chatgpt-0125": "openai", "gpt-4-0125": "gpt4"}
_CIRCULAR_MARKERS = ("mmbench", "ccbench", "circular", "mmcr")  # as image_mcq.py decides circular


class UnsupportedDataset(ValueError):
    """Per-row correctness cannot be read from this dataset's evaluation."""


class CannotJudge(UnsupportedDataset):
    """The benchmark needs an LLM judge, and none was given or the one given does not answer."""


def _family(dataset) -> str:
    kind = str(getattr(dataset, "TYPE", ""))
    name = dataset.dataset_name
    if "MCQ" in kind.upper():
        if any(m in name.lower() for m in _CIRCULAR_MARKERS):
            raise UnsupportedDataset(
                f"{name} is evaluated circularly by VLMEvalKit: its 'hit' is per question group, so a "
                f"candidate's per-row correctness cannot be read from it"
            )
        return "MCQ"
    if "Y/N" in kind.upper():
        return "Y/N"
    raise UnsupportedDataset(
        f"{name} has dataset type {kind!r}; BoN reports support multiple choice (MCQ) and yes/no (Y/N) "
        f"datasets, whose evaluate() writes a per-row verdict"
    )


def _detail_source(family: str, judge_kwargs: dict) -> tuple[str, str]:
    """(suffix of the detailed result file, its per-row verdict column)."""
    if family == "Y/N":
        return "_auxmatch", "score"
    if judge_kwargs.get("use_verifier"):
        return "_detailed_results", "verifier_match"
    judge = judge_kwargs.get("model", "exact_matching")
    return f"_{_MCQ_JUDGE_NAMES.get(judge, judge)}_result", "hit"


def cache_key(dataset, indices: Sequence, predictions: Sequence[str | None], judge_kwargs: dict) -> str:
    blob = json.dumps(
        {
            "dataset": dataset.dataset_name,
            "type": str(getattr(dataset, "TYPE", "")),
            "rows": [[str(i), p] for i, p in zip(indices, predictions)],
            "judge": judge_identity(judge_kwargs),  # the one definition of what identifies a verdict
        },
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
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


def judge_predictions(
    dataset, table: pd.DataFrame, predictions: Sequence[str | None], folder: str, model_name: str, judge_kwargs: dict
) -> list[bool | None]:
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
            f"written: {sorted(os.listdir(folder))}"
        )
    by_index = {str(i): _verdict(v) for i, v in zip(detail["index"], detail[column])}
    correct = [None if p is None else by_index.get(str(i)) for i, p in zip(table["index"], predictions)]
    _write_cache(folder, key, correct)
    return correct


def judge_candidates(
    dataset,
    table: pd.DataFrame,
    candidate_texts: Sequence[Sequence[str | None]],
    cache_root: str,
    model_name: str,
    judge_kwargs: dict,
    judge_cache: str | None = None,
) -> list[list[bool | None]]:
    """``result[i][row]``: correctness of candidate i on each row; ``candidate_texts[i][row]`` its text.

    A ``benchmarks`` dataset: judged per distinct (row, text), cached in ``judge_cache`` (default
    ``judge_cache_file`` in the parent of ``cache_root``: beside the store). Any other: one
    evaluation per candidate index, cached in ``<cache_root>/cand_{i}/``.
    """
    bench = find_benchmark(dataset)
    if bench is not None:
        path = judge_cache or judge_cache_file(
            os.path.dirname(os.path.abspath(cache_root)), model_name, dataset.dataset_name
        )
        return judge_benchmark(bench, dataset, table, candidate_texts, JudgeCache(path), judge_kwargs)
    _family(dataset)  # refuse before any work
    return [
        judge_predictions(dataset, table, texts, os.path.join(cache_root, f"cand_{i}"), model_name, judge_kwargs)
        for i, texts in enumerate(tqdm(candidate_texts, desc=f"judging {dataset.dataset_name}", unit="candidate"))
    ]


def vote_contexts(dataset, table: pd.DataFrame) -> list[VoteContext]:
    """How each row's answers become vote keys: the benchmark's own rule (options by letter, numbers
    at the dataset's precision), else the dataset type with the row's option columns."""
    bench = find_benchmark(dataset)
    if bench is not None:
        rows = bench.rows(table, dataset)
        return [bench.vote(rows.iloc[r]) for r in range(len(rows))]
    kind = str(getattr(dataset, "TYPE", ""))
    options = [c for c in table.columns if len(c) == 1 and c.isupper()]
    return [
        VoteContext(kind, {c: str(row[c]) for c in options if not pd.isna(row[c])} or None)
        for _, row in table.iterrows()
    ]


# -- the registry path -----------------------------------------------------------------------------
class _Judge:
    """The LLM judge, built on first use with VLMEvalKit's ``build_judge`` (a report whose answers are
    all cached builds none and sends nothing) and checked once with its ``working()``."""

    def __init__(self, bench: Benchmark, judge_kwargs: dict):
        self.bench = bench
        self.kwargs = {**{k: v for k, v in judge_kwargs.items() if k != "nproc"}, **bench.judge_options}
        self._model = None
        self._lock = threading.Lock()
        self.calls = 0

    def model(self):
        with self._lock:
            if self._model is None:
                from vlmeval.dataset.utils import build_judge

                chatty = [logging.getLogger(n) for n in _CHATTY_LOGGERS]
                levels = [c.level for c in chatty]
                for c in chatty:
                    c.setLevel(logging.WARNING)
                try:
                    model = build_judge(**self.kwargs)
                finally:
                    for c, level in zip(chatty, levels):
                        c.setLevel(level)
                if self.bench.system_prompt is not None:
                    model.system_prompt = self.bench.system_prompt
                if not model.working():
                    raise CannotJudge(
                        f"the judge {self.kwargs.get('model')!r} does not answer (VLMEvalKit's "
                        f"working() check failed): check --judge, --judge-base-url / OPENAI_API_BASE "
                        f"and OPENAI_API_KEY"
                    )
                self._model = model
            return self._model

    def generate(self, message, **kwargs):
        out = self.model().generate(message, **kwargs)
        with self._lock:
            self.calls += 1
        bump("judge_calls")
        return out


class _RowJudge:
    """The judge as one row's VLMEvalKit function sees it: counts its calls and remembers whether the
    last answer was VLMEvalKit's failure text."""

    def __init__(self, judge: _Judge):
        self.judge, self.calls, self.last_failed = judge, 0, False

    def generate(self, message, **kwargs):
        out = self.judge.generate(message, **kwargs)
        self.calls += 1
        self.last_failed = not isinstance(out, str) or FAIL_MSG in out
        return out


def _judge_one(bench: Benchmark, judge: _Judge | None, line: pd.Series, dataset_name: str) -> Judged:
    """VLMEvalKit's per-row function, then its check (both here, in a worker: MathVision's check
    starts a process per call, so it runs once per distinct answer, in parallel, and is cached)."""
    row_judge = _RowJudge(judge) if judge is not None else None
    try:
        result = bench.score(row_judge, line, dataset_name)
    except CannotJudge:
        raise
    except Exception as exc:  # recorded for this item (unscored), asked again next time
        return Judged(None, True, f"{type(exc).__name__}: {exc}", row_judge.calls if row_judge else 0)
    calls = row_judge.calls if row_judge else 0
    if bench.failed(result) or bool(row_judge and calls and row_judge.last_failed):
        return Judged(dict(result), True, "the judge failed", calls)
    try:
        correct = bool(bench.verdict(line, result))
    except Exception as exc:  # VLMEvalKit's check raised: unscored, never a default verdict
        return Judged(dict(result), True, f"check: {type(exc).__name__}: {exc}", calls)
    return Judged(dict(result), False, None, calls, correct)


def _identity(bench: Benchmark, judge_kwargs: dict, use_judge: bool) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        kit = version("ms-vlmeval")
    except PackageNotFoundError:
        kit = "unknown"
    if not use_judge:
        return {"model": EXACT_MATCHING, "vlmeval": kit}
    return {
        **judge_identity({**judge_kwargs, **bench.judge_options}),
        "system_prompt": bench.system_prompt,
        "vlmeval": kit,
    }


def judge_benchmark(
    bench: Benchmark,
    dataset,
    table: pd.DataFrame,
    candidate_texts: Sequence[Sequence[str | None]],
    cache: JudgeCache,
    judge_kwargs: dict,
) -> list[list[bool | None]]:
    """Correctness of every candidate text on every row by ``bench`` (VLMEvalKit's per-row function
    and check), each distinct (row, text) judged once and cached; None: no text, or the judge failed."""
    if any(len(texts) != len(table) for texts in candidate_texts):
        raise ValueError(f"every candidate needs one text per row ({len(table)} rows)")
    model = judge_kwargs.get("model") or EXACT_MATCHING
    use_judge = model != EXACT_MATCHING
    if bench.judge_required and not use_judge:
        raise CannotJudge(
            f"{dataset.dataset_name}: VLMEvalKit scores {bench.name} with an LLM judge (its evaluate() requires "
            f"one); pass --judge <model> (e.g. gpt-4o-mini, or a local model served by LMDeploy)"
        )
    rows = bench.rows(table, dataset)
    lines = [rows.iloc[r] for r in range(len(rows))]
    identity = _identity(bench, judge_kwargs, use_judge)
    digests = [row_digest(bench.name, identity, line) for line in lines]
    keys = [[item_key(d, t) if t is not None else None for d, t in zip(digests, texts)] for texts in candidate_texts]
    todo: dict[str, tuple[int, str]] = {}
    for texts, row_keys in zip(candidate_texts, keys):
        for r, (t, key) in enumerate(zip(texts, row_keys)):
            if key is not None and key not in todo and cache.needs_judging(key):
                todo[key] = (r, t)
    if todo:
        _judge_items(bench, dataset.dataset_name, lines, todo, cache, model, judge_kwargs, use_judge)

    failed, out = Counter(), []
    for row_keys in keys:
        column = []
        for key in row_keys:
            judged = cache.get(key) if key is not None else None
            if judged is not None and judged.failed:
                failed[(judged.error or "").split(":")[0]] += 1
            column.append(judged.correct if judged is not None and not judged.failed else None)
        out.append(column)
    if failed:
        log.warning(
            "%s: %d candidate answers unscored (%s), counted as correct_unknown, never as wrong; the next "
            "report asks again",
            dataset.dataset_name,
            sum(failed.values()),
            dict(failed),
        )
    return out


def _with_prediction(row: pd.Series, text: str) -> pd.Series:
    line = row.copy()
    line["prediction"] = text
    return line


def _judge_items(
    bench: Benchmark,
    dataset_name: str,
    lines: list[pd.Series],
    todo: dict[str, tuple[int, str]],
    cache: JudgeCache,
    model: str,
    judge_kwargs: dict,
    use_judge: bool,
) -> None:
    """Run the benchmark's per-row function on every item in ``todo`` (threads: ``nproc``), appending
    each result to the cache as it arrives. VLMEvalKit's helpers print prompts and warnings to
    stdout: that is swallowed here; the progress bar is on stderr."""
    judge = _Judge(bench, judge_kwargs) if use_judge else None
    nproc = max(1, int(judge_kwargs.get("nproc") or DEFAULT_JUDGE_NPROC))
    bar = tqdm(total=len(todo), desc=f"judging {dataset_name} ({model})", unit="answer")
    with contextlib.redirect_stdout(io.StringIO()), ThreadPoolExecutor(nproc) as pool:
        futures = {
            pool.submit(_judge_one, bench, judge, _with_prediction(lines[r], t), dataset_name): key
            for key, (r, t) in todo.items()
        }
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    judged = future.result()  # CannotJudge stops the report of this dataset
                    cache.put(futures[future], judged, benchmark=bench.name, judge=model)
                    bar.update()
                    if judge is not None:
                        bar.set_postfix(judge_calls=judge.calls, refresh=False)
        except CannotJudge:
            for future in pending:
                future.cancel()
            raise
        finally:
            bar.close()
