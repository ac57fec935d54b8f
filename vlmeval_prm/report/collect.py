"""``vlmeval-prm report``: the Best-of-N table of a finished VLMEvalKit run, from what it stored.

Inputs, all under VLMEvalKit's ``pred_root`` (``<work_dir>/<model>``): the prediction file, whose
``extra_records`` column holds BestOfN's JSON summary per row (store ``key``, ``n``, ``prm``...), and
the candidate store ``<model>_<dataset>_bon_candidates.jsonl`` with every candidate and its scores.
Every candidate is judged by VLMEvalKit's own scoring of the dataset (``judging``: the ``benchmarks``
registry, else the dataset's ``evaluate()``), so a strategy's BoN@N is on the same scale as the
accuracy VLMEvalKit reports. Outputs go beside VLMEvalKit's own:
``<pred_root>/<model>_<dataset>_bon_report*`` (CSV, xlsx, PNG).

Nothing in a run's data stops the report: a row without a summary or store entry becomes a question
with no candidates (``dropped_samples``); a candidate without text has unknown correctness
(``correct_unknown``); failed PRM/ORM scores and unparseable answers make the candidate abstain
from the strategies that need them; fewer than N candidates caps the question (``capped_samples``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from vlmeval_prm.report.judging import UnsupportedDataset, judge_candidates, vote_contexts
from vlmeval_prm.report.table import bon_table, print_report, write_report
from vlmeval_prm.select.answers import extract_answer
from vlmeval_prm.select.strategies import STRATEGIES, Candidate, SampleCandidates
from vlmeval_prm.store.jsonl import SampleRecords, index_records, read_records
from vlmeval_prm.store.paths import EVAL_ID, store_file
from vlmeval_prm.store.records import ScoreRecord, StoreError, Summary

DEFAULT_JUDGE = "exact_matching"
DEFAULT_NPROC = 4


class ReportError(RuntimeError):
    """A run's outputs are missing or are not a Best-of-N run."""


@dataclass
class RunData:
    samples: list[SampleCandidates]
    n: int  # candidates per question the run asked for
    dataset_type: str
    prm: list[str]  # PRM specs recorded in the summaries
    notes: dict[str, int] = field(default_factory=dict)  # rows/candidates that are incomplete, by kind
    #: What ``samples_for`` rebuilds the questions from for another scorer: the row summaries, the store,
    #: every candidate's correctness ([candidate][row]) and each row's voting context.
    summaries: list = field(default_factory=list, repr=False)
    store_path: str = ""
    correct: list = field(default_factory=list, repr=False)
    votes: list = field(default_factory=list, repr=False)
    table_index: list = field(default_factory=list, repr=False)


def pred_root(work_dir: str, model_name: str) -> str:
    """VLMEvalKit's output folder for a model (run.py: ``<work_dir>/<model_name>``)."""
    return os.path.join(work_dir, model_name)


def run_folders(work_dir: str, model_name: str) -> list[str]:
    """Where a model's prediction files may be: its folder (ms-vlmeval; upstream run.py links its files
    there once it has evaluated), then its run folders ``<eval_id>``, newest first (upstream run.py with
    ``--mode infer``, ``--api-mode``)."""
    root = pred_root(work_dir, model_name)
    try:
        runs = sorted(
            (d for d in os.listdir(root) if EVAL_ID.match(d) and os.path.isdir(os.path.join(root, d))), reverse=True
        )
    except OSError:
        runs = []
    return [root, *(os.path.join(root, d) for d in runs)]


def prediction_file(work_dir: str, model_name: str, dataset_name: str) -> str:
    """The run's prediction file: VLMEvalKit's name in the current ``PRED_FORMAT``, else any format, in the
    first of ``run_folders`` that has one."""
    from vlmeval.smp import get_pred_file_path

    preferred = get_pred_file_path(pred_root(work_dir, model_name), model_name, dataset_name)
    for folder in run_folders(work_dir, model_name):
        names = [os.path.basename(get_pred_file_path(folder, model_name, dataset_name))]
        names += [f"{model_name}_{dataset_name}.{ext}" for ext in ("xlsx", "tsv", "json")]
        for name in names:
            if os.path.exists(os.path.join(folder, name)):
                return os.path.join(folder, name)
    raise ReportError(
        f"no prediction file {preferred} (or .tsv/.json, or in a run folder <eval_id>/ there): run vlmeval.run for "
        f"{model_name} x {dataset_name} with --work-dir {work_dir} first"
    )


def run_judge(work_dir: str, model_name: str, dataset_name: str) -> str:
    """The judge the run itself used (VLMEvalKit's ``status.json``), so the numbers agree; else exact matching."""
    try:
        folder = os.path.dirname(prediction_file(work_dir, model_name, dataset_name))
    except ReportError:
        folder = pred_root(work_dir, model_name)
    try:
        with open(os.path.join(folder, "status.json"), encoding="utf-8") as f:
            judge = json.load(f)["datasets"][dataset_name].get("judge_model")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        judge = None
    return judge or DEFAULT_JUDGE


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, plus n."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return sorted(set(ks + [n]))


def _outcome_score(rec: ScoreRecord | None) -> float | None:
    scores = rec.scores if rec is not None else None
    return scores[0] if scores is not None and len(scores) == 1 else None


def store_candidate(
    entry: SampleRecords,
    i: int,
    prm: str | None,
    correct: bool | None,
    dataset_type: str,
    choices: dict | None,
    precision: int | None = None,
    sampling: str | None = None,
    scorer: str | None = None,
) -> Candidate:
    """Candidate i of a stored sample as the strategies see it: its vote key from the one normaliser
    (``answers.extract_answer``), and its PRM and ORM scores only where ``ScoreRecord.usable``.
    ``sampling``/``scorer``: the digests the run selected with (its ``Summary``; None: any)."""
    text = entry.text(i, sampling)
    step = entry.score(i, prm, "step", sampling, scorer) if prm else None
    return Candidate(
        text=text,
        answer=extract_answer(text, dataset_type, choices, precision) if text else None,
        correct=correct,
        step_scores=step.scores if step is not None else None,
        outcome_score=_outcome_score(entry.score(i, prm, "outcome", sampling, scorer)) if prm else None,
    )


def _build_dataset(dataset_name: str):
    from vlmeval.dataset import build_dataset

    dataset = build_dataset(dataset_name)
    if dataset is None:
        raise ReportError(f"VLMEvalKit cannot build dataset {dataset_name!r}")
    return dataset


def collect_run(work_dir: str, model_name: str, dataset_name: str, judge_kwargs: dict | None = None) -> RunData:
    """Every question of the run with its candidates, judged, parsed and scored (see ``load_run``)."""
    from vlmeval.smp import load

    judge_kwargs = dict(
        judge_kwargs or {"model": run_judge(work_dir, model_name, dataset_name), "nproc": DEFAULT_NPROC}
    )
    table = load(prediction_file(work_dir, model_name, dataset_name))
    if "extra_records" not in table:
        raise ReportError(
            f"{model_name} x {dataset_name}: the prediction file has no extra_records column; "
            f"was the run made with a Best-of-N model (a '-BoN<N>' name)?"
        )
    store_path = store_file(pred_root(work_dir, model_name), model_name, dataset_name)
    if not os.path.exists(store_path):
        raise ReportError(f"no candidate store {store_path}")
    try:
        store = index_records(read_records(store_path))
        summaries = [Summary.from_json(raw) for raw in table["extra_records"]]
    except StoreError as exc:
        raise ReportError(f"{model_name} x {dataset_name}: {exc}") from exc
    entries = [store.get(s.key) if s else None for s in summaries]
    n = max((s.n for s in summaries if s), default=0)
    if n < 1:
        raise ReportError(f"{model_name} x {dataset_name}: no row carries a Best-of-N summary in extra_records")

    dataset = _build_dataset(dataset_name)
    dataset_type = str(dataset.TYPE)
    texts = [[e.text(i, s.sampling) if e else None for s, e in zip(summaries, entries)] for i in range(n)]
    correct = judge_candidates(
        dataset, table, texts, os.path.join(pred_root(work_dir, model_name), "bon_report"), model_name, judge_kwargs
    )
    run = RunData(
        samples=[],
        n=n,
        dataset_type=dataset_type,
        prm=sorted({s.prm for s in summaries if s and s.prm}),
        notes={
            "rows": len(table),
            "rows_without_summary": sum(s is None for s in summaries),
            "rows_not_in_store": sum(s is not None and e is None for s, e in zip(summaries, entries)),
            "rows_with_fewer_than_n": 0,
            "candidates_without_text": 0,
        },
        summaries=summaries,
        store_path=store_path,
        correct=correct,
        votes=vote_contexts(dataset, table),  # options by letter, numbers at the dataset's precision
        table_index=[str(i) for i in table["index"]],
    )
    run.samples = samples_for(run, store)
    return run


def samples_for(
    run: RunData, store: dict[str, SampleRecords], prm: str | None = None, scorer: str | None = None
) -> list[SampleCandidates]:
    """The run's questions with their stored candidates, scored by ``prm``/``scorer`` (a digest); None: the
    scorer each row's summary names (the run's own). Counts incomplete rows in ``run.notes`` for the run's own."""
    own = prm is None
    samples = []
    for r, summary in enumerate(run.summaries):
        entry = store.get(summary.key) if summary else None
        if entry is None:  # no candidates at all: bon_curve drops the question, and says so
            samples.append(SampleCandidates(key=run.table_index[r], candidates=[]))
            continue
        present = [i for i in range(run.n) if entry.candidate(i, summary.sampling) is not None]
        if own:
            run.notes["rows_with_fewer_than_n"] += len(present) < run.n
            run.notes["candidates_without_text"] += sum(entry.text(i, summary.sampling) is None for i in present)
        vote = run.votes[r]
        samples.append(
            SampleCandidates(
                key=summary.key,
                candidates=[
                    store_candidate(
                        entry,
                        i,
                        summary.prm if own else prm,
                        run.correct[i][r],
                        vote.dataset_type,
                        vote.choices,
                        vote.precision,
                        summary.sampling,
                        summary.scorer if own else scorer,
                    )
                    for i in present
                ],
            )
        )
    return samples


def load_run(
    work_dir: str, model_name: str, dataset_name: str, judge_kwargs: dict | None = None
) -> list[SampleCandidates]:
    """One ``SampleCandidates`` per row of the run's prediction file, in file order.

    Candidates are the stored ones (index order) with: correctness judged by the dataset's own
    ``evaluate`` under ``judge_kwargs`` (default: the run's judge); the extracted answer
    (``answers.extract_answer`` with the dataset's TYPE and the row's options); the PRM step scores
    and ORM score (``mode`` "outcome", its single step) of the PRM the row's summary names.
    """
    return collect_run(work_dir, model_name, dataset_name, judge_kwargs).samples


def _strategies(samples: Sequence[SampleCandidates]) -> list[str] | None:
    """All strategies, less ``orm`` for a run without ORM scores (its row would read 0, not n/a)."""
    has_orm = any(c.outcome_score is not None for s in samples for c in s.candidates)
    return None if has_orm else [name for name in STRATEGIES if name != "orm"]


def _print_notes(run: RunData, out: TextIO) -> None:
    notes = run.notes
    print(
        f"{notes['rows']} questions, N = {run.n}, type {run.dataset_type}, PRM {', '.join(run.prm) or '-'}; "
        f"{notes['rows_without_summary']} without a BoN summary and {notes['rows_not_in_store']} missing from "
        f"the candidate store (dropped), {notes['rows_with_fewer_than_n']} with fewer than N candidates, "
        f"{notes['candidates_without_text']} candidates without text (correctness unknown)",
        file=out,
    )


def report(
    runs: Sequence[tuple[str, str, str]],
    ks: Sequence[int] | None = None,
    judge: str | None = None,
    judge_kwargs: dict | None = None,
    strategies: Sequence[str] | None = None,
    file: TextIO | None = None,
) -> dict:
    """For each ``(work_dir, model, dataset)``: judge, build the BoN table, write and print it.

    ``ks`` default: ``default_ks(N)``; ``judge`` default: the judge the run used; ``judge_kwargs``
    go to ``evaluate`` as in ``vlmeval.run`` (``--judge-args``). Returns, keyed by the run tuple,
    ``{"run", "table", "exclusions", "paths", "n", "prm", "judge", "notes"}``, or ``{"error": message}``
    for a run that could not be reported (the others still are).
    """
    out = file or sys.stdout
    results = {}
    for run_id in runs:
        work_dir, model, dataset = run_id
        print(f"\n=== {model} x {dataset} ===", file=out, flush=True)
        try:
            kwargs = {"nproc": DEFAULT_NPROC, **(judge_kwargs or {})}
            kwargs["model"] = judge or kwargs.get("model") or run_judge(work_dir, model, dataset)
            run = collect_run(work_dir, model, dataset, kwargs)
            names = list(strategies) if strategies else _strategies(run.samples)
            table, exclusions = bon_table(run.samples, ks or default_ks(run.n), names)
            prefix = os.path.join(pred_root(work_dir, model), f"{model}_{dataset}_bon_report")
            paths = write_report(table, exclusions, prefix)
        except (ReportError, UnsupportedDataset) as exc:
            print(f"cannot report {model} x {dataset}: {exc}", file=out)
            results[run_id] = {"error": str(exc)}
            continue
        print(f"judge: {kwargs['model']}", file=out)
        _print_notes(run, out)
        if not strategies and names is not None:
            print("no ORM scores in this run (BestOfN orm=true records them): strategy orm left out", file=out)
        print_report(table, exclusions, file=out)
        for kind, path in paths.items():
            print(f"{kind}: {path}", file=out)
        results[run_id] = {
            "run": run,
            "table": table,
            "exclusions": exclusions,
            "paths": paths,
            "n": run.n,
            "prm": run.prm,
            "judge": kwargs["model"],
            "notes": run.notes,
        }
    return results
