"""The paper's seven benchmarks as VLMEvalKit scores them: one registry entry per dataset family.

VisualPRM's overall is the mean of MMMU, MathVista, MathVision, MathVerse (vision-only), DynaMath,
WeMath and LogicVista. For each, an entry names the per-row function VLMEvalKit's ``evaluate()``
maps over the prediction rows (its rule-based pre-check, then the judge where the rules fail) and the
check it applies to that function's output, so a candidate's verdict here is the one VLMEvalKit
gives when that candidate's answers are evaluated alone. Nothing of VLMEvalKit's prompts or checks
is rewritten: the functions are VLMEvalKit's, called per (question, candidate).

Each entry also gives the dataset-level metrics (``Metric``), headline first. Most are a mean of
per-row correctness; DynaMath's worst case, WeMath's strict/loose scores and circular multiple
choice (MMBench) are not. Every metric here is a sum over groups of rows of a function that is
multilinear in the rows' correctness (a product for "all rotations/variants right", an
enumeration of right/wrong patterns for WeMath), so with each row's candidates drawn independently
its Best-of-N expectation follows exactly from each row's expected correctness (``bon_metrics``).
Where VLMEvalKit writes a metric's grouping inline rather than in a function, the lines are cited.

An entry matches a dataset by VLMEvalKit class (anywhere in its MRO) and, optionally, by name;
the first match wins. Datasets without an entry go through ``judging``'s evaluate() path.
"""

from __future__ import annotations

import ast
import itertools
import os
import string
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

#: VLMEvalKit's text for a failed API call (``BaseAPI.fail_msg``, ``FAIL_MSG`` in its math utils).
FAIL_MSG = "Failed to obtain answer via API."
#: What VLMEvalKit's math helpers log when every judge attempt failed (utils/mathvista.py & co.).
_RETRIES_FAILED = "All 5 retries failed"
#: What ``extract_answer_from_item`` logs when it gives up and picks an option at random
#: (vlmeval/dataset/utils/multiple_choice.py): a coin flip, not a verdict.
_RANDOM_OPTION = "Failed to predict, thus randomly generate one"
#: ``wemath_evaluate_models`` scores against a fixed 525 multi-step problems (``total_count=525``,
#: and ``525 - 0.5 * IG - RM - IK`` in ``evaluate_update_main_results_df``, vlmeval/dataset/utils/wemath.py).
WEMATH_TOTAL = 525
#: ``Dynamath.evaluate`` (vlmeval/dataset/dynamath.py) sets this system prompt on its judge; it is
#: inline there, so it is repeated here and pinned by a test against that source.
DYNAMATH_SYSTEM_PROMPT = """\
You are a helpful assistant that helps me to format free-form answers into a short answer according to the instruction.
"""
#: DynaMath asks for "three-digit floating-point" answers and grades floats to within 0.001.
DYNAMATH_FLOAT_DIGITS = 3


class BenchmarkFormatError(ValueError):
    """The prediction table lacks what the benchmark's own metric needs."""


@dataclass(frozen=True)
class VoteContext:
    """How one row's answers become vote keys (``answers.extract_answer`` arguments)."""

    dataset_type: str
    choices: dict | None = None
    precision: int | None = None


@dataclass(frozen=True)
class Metric:
    """``offset + slope * mean over groups of group_value(member correctness)``, in 0..1.

    ``group_value`` must be multilinear in each member's correctness (affine in each one with the
    others fixed), which makes the expectation under independent draws exact. Default: the product
    (a group counts only if all its rows are right; a one-row group is plain accuracy).
    """

    name: str
    groups: tuple[tuple[int, ...], ...]
    group_value: Callable[[Sequence[float]], float] | None = None
    offset: float = 0.0
    slope: float = 1.0
    note: str = ""

    def value_of(self, members: Sequence[float]) -> float:
        return self.group_value(members) if self.group_value else float(np.prod(members))


@dataclass(frozen=True)
class Benchmark:
    name: str  # family label: the paper's name for it
    classes: tuple[str, ...]  # VLMEvalKit dataset classes it covers (matched anywhere in the MRO)
    score: Callable[[Any, pd.Series, str], dict]  # VLMEvalKit's per-row function (judge may be None)
    verdict: Callable[[pd.Series, dict], bool]  # VLMEvalKit's check on that function's output
    metrics: Callable[[pd.DataFrame], list[Metric]]  # headline first; rows = the prediction table
    vote: Callable[[pd.Series], VoteContext]
    prepare: Callable[[pd.DataFrame, Any], pd.DataFrame] | None = None  # rows as evaluate() hands them on
    failed: Callable[[dict], bool] = lambda result: False  # the judge gave up on this row
    judge_required: bool = True  # False: "exact_matching" is VLMEvalKit's own rule-only mode
    judge_options: dict = field(default_factory=dict)  # build_judge extras that evaluate() passes
    system_prompt: str | None = None  # set on the judge as evaluate() does
    name_filter: Callable[[str], bool] | None = None

    def covers(self, cls: type, dataset_name: str) -> bool:
        mro = {c.__name__ for c in cls.__mro__}
        return bool(mro & set(self.classes)) and (self.name_filter is None or self.name_filter(dataset_name))

    def rows(self, table: pd.DataFrame, dataset) -> pd.DataFrame:
        """The prediction table as this benchmark's per-row function expects it (same row order)."""
        rows = self.prepare(table, dataset) if self.prepare else table
        return rows.reset_index(drop=True)


BENCHMARKS: list[Benchmark] = []


def register(benchmark: Benchmark) -> Benchmark:
    BENCHMARKS.append(benchmark)
    return benchmark


def find_benchmark(dataset) -> Benchmark | None:
    """The first registered entry covering ``dataset`` (a VLMEvalKit dataset object), else None."""
    return next((b for b in BENCHMARKS if b.covers(type(dataset), dataset.dataset_name)), None)


def benchmark_named(dataset_name: str) -> Benchmark | None:
    """``find_benchmark`` by name alone: the class VLMEvalKit's ``build_dataset`` would pick, without
    loading the data."""
    from vlmeval.dataset import DATASET_CLASSES

    cls = next((c for c in DATASET_CLASSES if dataset_name in c.supported_datasets()), None)
    return next((b for b in BENCHMARKS if b.covers(cls, dataset_name)), None) if cls is not None else None


# -- shared pieces ----------------------------------------------------------------------------------
def _log_says(*fields: str, text: str) -> Callable[[dict], bool]:
    def failed(result: dict) -> bool:
        return any(text in str(result.get(f, "")) for f in fields)

    return failed


def _with(line: pd.Series, **values) -> pd.Series:
    line = line.copy()
    for k, v in values.items():
        line[k] = v
    return line


def _mean(rows: pd.DataFrame, name: str = "accuracy", mask: Sequence[bool] | None = None) -> Metric:
    keep = range(len(rows)) if mask is None else [r for r, m in enumerate(mask) if m]
    return Metric(name, tuple((r,) for r in keep))


def _choice_list(raw) -> dict | None:
    """A row's option list ("['3/11', '8/11']") as VLMEvalKit's ``list_to_dict`` makes it: A, B, ..."""
    try:
        values = ast.literal_eval(raw) if isinstance(raw, str) else None
    except (ValueError, SyntaxError):
        return None
    if not isinstance(values, (list, tuple)) or not values:
        return None
    return {chr(65 + i): str(v) for i, v in enumerate(values)}


def _option_columns(line: pd.Series) -> dict | None:
    found = {c: str(line[c]) for c in string.ascii_uppercase if c in line.index and not pd.isna(line[c])}
    return found or None


def _precision(value) -> int | None:
    try:
        p = int(float(value))
    except (TypeError, ValueError):
        return None
    return p if p >= 0 else None


# -- MathVista (vlmeval/dataset/image_vqa.py MathVista.evaluate_heuristic, utils/mathvista.py) -------
def _mathvista_score(judge, line: pd.Series, dataset_name: str) -> dict:
    from vlmeval.dataset.utils.mathvista import MathVista_auxeval

    return MathVista_auxeval(judge, line)


def _mathvista_verdict(line: pd.Series, result: dict) -> bool:
    from vlmeval.dataset.utils.mathvista import post_check  # what MathVista_acc counts as a hit

    return bool(post_check(_with(line, res=result["res"]), prefetch=False))


def _mathvista_vote(line: pd.Series) -> VoteContext:
    if line.get("question_type") == "multi_choice":
        return VoteContext("VQA", _choice_list(line.get("choices")))
    kind = line.get("answer_type")
    return VoteContext("VQA", None, 0 if kind == "integer" else _precision(line.get("precision")))


register(
    Benchmark(
        name="MathVista",
        classes=("MathVista",),
        score=_mathvista_score,
        verdict=_mathvista_verdict,
        metrics=lambda rows: [_mean(rows)],
        vote=_mathvista_vote,
        failed=_log_says("log", text=_RETRIES_FAILED),
        judge_options={"max_tokens": 128},
    )
)


# -- MathVision (image_vqa.py MathVision.evaluate_heuristic, utils/mathv.py) -----------------------
def _mathv_score(judge, line: pd.Series, dataset_name: str) -> dict:
    from vlmeval.dataset.utils.mathv import MATH_V_auxeval

    return MATH_V_auxeval(judge, line)


def _mathv_verdict(line: pd.Series, result: dict) -> bool:
    from vlmeval.dataset.utils.mathv import post_check  # what MATH_V_acc counts as a hit

    return bool(post_check(_with(line, res=result["res"]), prefetch=False))


register(
    Benchmark(
        name="MathVision",
        classes=("MathVision",),
        score=_mathv_score,
        verdict=_mathv_verdict,
        metrics=lambda rows: [_mean(rows)],
        vote=lambda line: VoteContext("VQA", _choice_list(line.get("choices"))),
        failed=_log_says("log", text=_RETRIES_FAILED),
        judge_options={"max_tokens": 128},
    )
)


# -- MathVerse (image_vqa.py MathVerse.evaluate: extract, then score; utils/mathverse.py) ----------
def _mathverse_score(judge, line: pd.Series, dataset_name: str) -> dict:
    from vlmeval.dataset.utils.mathverse import MathVerse_auxeval_extract, MathVerse_auxeval_score

    extracted = MathVerse_auxeval_extract(judge, line)
    scored = MathVerse_auxeval_score(judge, _with(line, extract=extracted["extract"]))
    return {**extracted, **scored}


def _mathverse_vote(line: pd.Series) -> VoteContext:
    if "choice" in str(line.get("question_type", "")):  # "multi-choice": options live in the question text
        return VoteContext("MCQ")
    return VoteContext("VQA")


register(
    Benchmark(
        name="MathVerse",
        classes=("MathVerse",),
        score=_mathverse_score,
        verdict=lambda line, result: bool(result["score"]),  # MathVerse_acc averages 'score'
        metrics=lambda rows: [_mean(rows)],
        vote=_mathverse_vote,
        failed=_log_says("log_extract", "log_score", text=_RETRIES_FAILED),
        judge_options={"max_tokens": 128},
    )
)


# -- DynaMath (vlmeval/dataset/dynamath.py: DynaMath_auxeval, Dynamath.evaluate) ------------------
def _dynamath_score(judge, line: pd.Series, dataset_name: str) -> dict:
    from vlmeval.dataset.dynamath import DynaMath_auxeval

    return DynaMath_auxeval(judge, line)


def _dynamath_metrics(rows: pd.DataFrame) -> list[Metric]:
    """Worst case, as ``Dynamath.evaluate`` computes it: ``qid2corr`` is keyed by the index of each
    ``varid == 1`` row, every row multiplies its correctness into ``qid2corr[its qid]``, and each
    ``varid == 1`` row then scores ``qid2corr[its qid]``. Average: the mean of ``correct``."""
    missing = {"index", "qid", "varid"} - set(rows.columns)
    if missing:
        raise BenchmarkFormatError(f"DynaMath's worst case needs columns {sorted(missing)}")
    keys = set(rows.loc[rows["varid"] == 1, "index"])
    members: dict = {k: [] for k in keys}
    for r, qid in enumerate(rows["qid"]):
        if qid not in members:
            raise BenchmarkFormatError(
                f"DynaMath row {rows['index'].iloc[r]}: qid {qid} is not the index of a "
                f"varid 1 row, which VLMEvalKit's worst case requires"
            )
        members[qid].append(r)
    worst = tuple(tuple(members[q]) for q in rows.loc[rows["varid"] == 1, "qid"])
    return [
        Metric("worst_case", worst, note="a seed question counts only if all its variants are right"),
        _mean(rows, "average"),
    ]


def _dynamath_vote(line: pd.Series) -> VoteContext:
    kind = line.get("answer_type")
    if kind == "multiple choice":
        return VoteContext("MCQ")
    return VoteContext("VQA", None, DYNAMATH_FLOAT_DIGITS if kind == "float" else None)


register(
    Benchmark(
        name="DynaMath",
        classes=("Dynamath",),
        score=_dynamath_score,
        verdict=lambda line, result: bool(result["correct"]),
        metrics=_dynamath_metrics,
        vote=_dynamath_vote,
        system_prompt=DYNAMATH_SYSTEM_PROMPT,
    )
)


# -- LogicVista (image_vqa.py LogicVista.evaluate, utils/logicvista.py) ---------------------------
def _logicvista_score(judge, line: pd.Series, dataset_name: str) -> dict:
    from vlmeval.dataset.utils.logicvista import LogicVista_auxeval

    return LogicVista_auxeval(judge, line)


register(
    Benchmark(
        name="LogicVista",
        classes=("LogicVista",),
        score=_logicvista_score,
        verdict=lambda line, result: bool(result["hit"]),  # evaluate_logicvista sums 'hit'
        metrics=lambda rows: [_mean(rows)],
        vote=lambda line: VoteContext("MCQ"),
        failed=_log_says("log", text=_RETRIES_FAILED),
        judge_options={"max_tokens": 128},
    )
)


# -- multiple choice through mcq_vanilla_eval / mcq_circular_eval (utils/multiple_choice.py) --------
def _mcq_rows(table: pd.DataFrame, dataset) -> pd.DataFrame:
    """What ``ImageMCQDataset.evaluate_heuristic`` and ``WeMath.evaluate`` hand ``eval_vanilla``: column
    names lower-cased except option letters, MMMU's open questions recast by ``MMMU_preproc``, and
    ``GT`` from the dataset's own answers (for MMMU, a non-letter answer becomes 'A')."""
    from vlmeval.dataset.utils.multiple_choice import MMMU_preproc

    data = table.copy()
    for k in list(data.keys()):
        data[k.lower() if k not in list(string.ascii_uppercase) else k] = data.pop(k)
    if "id" in data.columns:
        data = data.rename(columns={"id": "ID"})  # WeMath.evaluate renames it back
    meta = dataset.data
    answer_map = dict(zip(meta["index"], meta["answer"]))
    if "MMMU" in dataset.dataset_name:
        data = MMMU_preproc(data)
        answer_map = {k: (v if v in list(string.ascii_uppercase) else "A") for k, v in answer_map.items()}
    unknown = [i for i in data["index"] if i not in answer_map]
    if unknown:
        raise BenchmarkFormatError(f"rows {unknown[:5]} are not in dataset {dataset.dataset_name}")
    data["GT"] = [answer_map[i] for i in data["index"]]
    return data


def _mcq_score(judge, line: pd.Series, dataset_name: str) -> dict:
    from vlmeval.dataset.utils.multiple_choice import eval_vanilla

    return eval_vanilla(judge, line, dataset_name=dataset_name)


def _mmmu_metrics(rows: pd.DataFrame) -> list[Metric]:
    """``report_acc``: Overall per split (MMMU_DEV_VAL: 'validation' is the reported one)."""
    if "split" not in rows.columns:
        return [_mean(rows)]
    splits = sorted(set(rows["split"]), key=lambda s: (s != "validation", str(s)))
    return [_mean(rows, f"accuracy_{s}", [x == s for x in rows["split"]]) for s in splits]


def _mcq_vote(line: pd.Series) -> VoteContext:
    return VoteContext("MCQ", _option_columns(line))


_MCQ = {
    "score": _mcq_score,
    "verdict": lambda line, result: int(result["hit"]) == 1,
    "vote": _mcq_vote,
    "prepare": _mcq_rows,
    "failed": _log_says("log", text=_RANDOM_OPTION),
    "judge_required": False,
}

register(Benchmark(name="MMMU", classes=("MMMUDataset",), metrics=_mmmu_metrics, **_MCQ))


def _is_circular(dataset_name: str) -> bool:
    """``ImageMCQDataset.evaluate_heuristic``'s rule for circular evaluation."""
    from vlmeval.smp import listinstr

    return listinstr(["mmbench", "ccbench", "circular", "mmcr"], dataset_name.lower())


def _circular_metrics(rows: pd.DataFrame) -> list[Metric]:
    """``mcq_circular_eval``: rows with the same ``g_index`` (default ``int(index % 1e6)``) are the
    rotations of one question, which counts only if every rotation is right; the accuracy is over
    the main rows (``index == g_index``)."""
    index = [int(i) for i in rows["index"]]
    g_index = [int(g) for g in rows["g_index"]] if "g_index" in rows.columns else [int(i % 1e6) for i in index]
    members: dict[int, list[int]] = {}
    for r, g in enumerate(g_index):
        members.setdefault(g, []).append(r)
    groups = tuple(tuple(members[i]) for i, g in zip(index, g_index) if i == g)
    return [Metric("circular_accuracy", groups, note="a question counts only if all its rotations are right")]


register(
    Benchmark(
        name="CircularMCQ", classes=("ImageMCQDataset",), metrics=_circular_metrics, name_filter=_is_circular, **_MCQ
    )
)


# -- WeMath (image_mcq.py WeMath.evaluate, utils/wemath.py) ---------------------------------------
def _on_file(fn: Callable[[str], pd.DataFrame], frame: pd.DataFrame) -> pd.DataFrame:
    """Run a VLMEvalKit function that only takes a file path on an in-memory frame."""
    from vlmeval.smp import dump

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.pkl")
        dump(frame, path)
        return fn(path)


def _wemath_rows(table: pd.DataFrame, dataset) -> pd.DataFrame:
    return _mcq_rows(table, dataset)


def _wemath_score(judge, line: pd.Series, dataset_name: str) -> dict:
    """With a judge, ``mcq_vanilla_eval``'s ``eval_vanilla``; with exact matching, VLMEvalKit's own rule
    in ``load_and_process_data`` (the first letter after the last "Answer")."""
    if judge is not None:
        return _mcq_score(judge, line, dataset_name)
    from vlmeval.dataset.utils.wemath import load_and_process_data

    frame = pd.DataFrame([{"prediction": str(line["prediction"]), "answer": line["answer"]}])
    return {"joker": bool(_on_file(load_and_process_data, frame)["joker"].iloc[0])}


def _wemath_verdict(line: pd.Series, result: dict) -> bool:
    return bool(result["joker"]) if "joker" in result else int(result["hit"]) == 1


@cache
def _wemath_penalties(steps: int) -> dict[str, dict[tuple[bool, ...], float]]:
    """Penalty of each right/wrong pattern of (sub-problem 1..steps, multi-step problem), from
    VLMEvalKit's own category rules (``evaluate_calculate_metrics``): 0.5 per InadequateGeneralization,
    1 per RoteMemorization (strict or loose) and per InsufficientKnowledge."""
    from vlmeval.dataset.utils.wemath import evaluate_calculate_metrics

    patterns = list(itertools.product([False, True], repeat=steps + 1))
    cols = [f"joker_{i}" for i in range(1, steps + 1)] + ["joker_multi"]
    frame = pd.DataFrame(patterns, columns=cols).assign(pattern=range(len(patterns)))
    other = 3 if steps == 2 else 2
    empty = pd.DataFrame(
        {c: pd.Series(dtype=bool) for c in [f"joker_{i}" for i in range(1, other + 1)] + ["joker_multi"]}
    )
    found = evaluate_calculate_metrics(frame, empty) if steps == 2 else evaluate_calculate_metrics(empty, frame)

    def hits(category: str) -> set[int]:
        return set(found[f"steps{steps}_filtered_rows_{category}"]["pattern"])

    ig, ik = hits("2"), hits("3")
    out = {}
    for mode in ("strict", "loose"):
        rm = hits(f"1_{mode}")
        out[mode] = {p: 0.5 * (i in ig) + (i in rm) + (i in ik) for i, p in enumerate(patterns)}
    return out


def _expected_penalty(mode: str, members: Sequence[float]) -> float:
    table = _wemath_penalties(len(members) - 1)[mode]
    total = 0.0
    for pattern, penalty in table.items():
        if penalty:
            total += penalty * float(np.prod([p if bit else 1 - p for p, bit in zip(members, pattern)]))
    return total


def _wemath_metrics(rows: pd.DataFrame) -> list[Metric]:
    """Score (strict/loose) = (525 - 0.5 IG - RM - IK) / 525 over the 2- and 3-step problems, grouped
    with VLMEvalKit's own ``evaluate_process_steps_data`` (sub-problems and the multi-step problem by ID)."""
    from vlmeval.dataset.utils.wemath import evaluate_process_steps_data

    if not {"key", "ID"} <= set(rows.columns):
        raise BenchmarkFormatError("WeMath's scores need columns 'key' and 'ID'")
    frame = rows[["key", "ID"]].assign(joker=range(len(rows)))  # 'joker' carries each row's position
    groups = []
    for steps in (2, 3):
        part = frame[frame["key"].str.contains(f"{steps}steps")]
        merged = evaluate_process_steps_data(part.copy(), steps)
        cols = [f"joker_{i}" for i in range(1, steps + 1)] + ["joker_multi"]
        for values in merged[cols].itertuples(index=False):
            if any(pd.isna(v) for v in values):
                raise BenchmarkFormatError(f"WeMath {steps}-step problem {values} lacks one of its rows")
            groups.append(tuple(int(v) for v in values))
    slope = -len(groups) / WEMATH_TOTAL
    return [
        Metric(
            f"score_{mode}",
            tuple(groups),
            group_value=lambda m, mode=mode: _expected_penalty(mode, m),
            offset=1.0,
            slope=slope,
            note=f"(525 - 0.5 IG - RM_{mode} - IK) / 525",
        )
        for mode in ("strict", "loose")
    ]


register(
    Benchmark(
        name="WeMath",
        classes=("WeMath",),
        score=_wemath_score,
        verdict=_wemath_verdict,
        metrics=_wemath_metrics,
        vote=_mcq_vote,
        prepare=_wemath_rows,
        failed=_log_says("log", text=_RANDOM_OPTION),
        judge_required=False,
    )
)

#: The paper's order of the seven (VisualPRM Table 2; FACTS section 2).
PAPER_ORDER = ("MMMU", "MathVista", "MathVision", "MathVerse", "DynaMath", "WeMath", "LogicVista")
