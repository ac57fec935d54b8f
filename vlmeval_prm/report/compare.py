"""``vlmeval-prm report --compare``: several reward models on one run's candidates.

One sampling run, several scorers: each scorer given scores the run's stored candidates it has not scored
yet (appended to the same store, so a second report scores nothing), then every scorer gets the run's
Best-of-N table, built from the same candidates and the same correctness judgements. A summary table puts
the scorers side by side (BoN@k of ``prm_<aggregate>``, and the gain at the largest N over Pass@1); a plot
draws their curves. Given each scorer's result on a reward benchmark (``VisualProcessBench`` macro F1, a
``VLRewardBench`` accuracy: a number or the benchmark's metrics file), a second plot sets benchmark score
against Best-of-N gain and the Pearson correlation is printed (VL-RewardBench's authors report r > 0.9).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import pandas as pd
from tqdm import tqdm

from vlmeval_prm.constants import MAX_STEPS
from vlmeval_prm.report.collect import (
    DEFAULT_NPROC,
    RunData,
    collect_run,
    default_ks,
    pred_root,
    run_judge,
    samples_for,
)
from vlmeval_prm.report.paper_table import plot_curves
from vlmeval_prm.report.table import bon_table, print_report, write_report
from vlmeval_prm.store.jsonl import CandidateStore, index_records, read_records


@dataclass(frozen=True)
class Contender:
    """A scorer to compare: its spec and options (``label`` names it in the tables; default: the spec), and
    optionally its reward-benchmark score (a number, or a metrics file: VisualProcessBench's
    ``*_metrics.csv`` gives its Overall macro F1)."""

    spec: str
    options: dict = field(default_factory=dict)
    max_steps: int = MAX_STEPS
    benchmark: float | str | None = None
    label: str | None = None


def benchmark_score(value: float | str | None) -> float | None:
    """A reward-benchmark score in percent from a number or a metrics file (Overall row, first F1/accuracy
    column); ValueError naming the file when it has neither."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    table = pd.read_csv(value) if value.endswith(".csv") else pd.read_excel(value)
    first = table.columns[0]
    overall = table[table[first].astype(str).str.lower() == "overall"]
    columns = [c for c in table.columns if any(w in str(c).lower() for w in ("macro_f1", "f1", "acc"))]
    if overall.empty or not columns:
        raise ValueError(f"{value}: no Overall row with an F1 or accuracy column")
    return float(overall[columns[0]].iloc[0])


def score_stored(run: RunData, contender: Contender, file: TextIO) -> tuple[str, int]:
    """Score the run's stored candidates with ``contender`` where it has not (its StoreScoring); returns
    (its digest, how many candidates it scored now)."""
    from vlmeval_prm.store.scoring import StoreScoring

    scoring = StoreScoring(contender.spec, contender.options, contender.max_steps)
    store = CandidateStore(run.store_path)
    scored = 0
    for summary in tqdm(run.summaries, desc=f"scoring with {contender.spec}", unit="question", disable=None):
        if summary is None:
            continue
        entry = store.get(summary.key)
        if entry.sample is None:
            continue
        sample = entry.sample
        scored += scoring.score_missing(
            store, entry, summary.key, sample.question, list(sample.images), "step", run.n, summary.sampling
        )
    print(f"{contender.spec}: scored {scored} stored candidates now (the others were scored before)", file=file)
    return scoring.identity[1], scored


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's r; None for fewer than two points or no spread."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def _plots(summary: pd.DataFrame, prefix: str, strategy: str) -> dict[str, str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = {"compare_png": f"{prefix}_compare.png"}
    ks = [c for c in summary.columns if isinstance(c, int)]
    plot_curves(summary[ks], f"{strategy} accuracy", paths["compare_png"])  # the paper table's curves
    known = summary.dropna(subset=["benchmark"])
    if len(known):
        paths["benchmark_png"] = f"{prefix}_benchmark_vs_gain.png"
        fig = Figure(figsize=(6, 4.5), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.scatter(known["benchmark"], known["gain"])
        for scorer, row in known.iterrows():
            ax.annotate(str(scorer), (row["benchmark"], row["gain"]), fontsize="small")
        ax.set_xlabel("reward benchmark score (%)")
        ax.set_ylabel(f"Best-of-{max(ks)} gain over Pass@1 (points)")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(paths["benchmark_png"])
    return paths


def compare(
    work_dir: str,
    model: str,
    dataset: str,
    contenders: Sequence[Contender],
    ks: Sequence[int] | None = None,
    judge: str | None = None,
    judge_kwargs: dict | None = None,
    aggregate: str = "mean",
    file: TextIO | None = None,
) -> dict:
    """The comparison of the run's own scorer and ``contenders`` on ``model`` x ``dataset`` (see the module
    docstring). Returns ``{"tables": {scorer: table}, "summary": DataFrame, "r": float | None, "paths": {...}}``."""
    out = file or sys.stdout
    kwargs = {"nproc": DEFAULT_NPROC, **(judge_kwargs or {})}
    kwargs["model"] = judge or kwargs.get("model") or run_judge(work_dir, model, dataset)
    run = collect_run(work_dir, model, dataset, kwargs)
    ks = sorted(set(ks or default_ks(run.n)))
    strategy = f"prm_{aggregate}"
    names = [strategy, "self_consistency", "random", "oracle"]
    scorers: dict[str, tuple[list, float | None]] = {f"{' + '.join(run.prm) or '?'} (the run's)": (run.samples, None)}
    for contender in contenders:
        benchmark = benchmark_score(contender.benchmark)  # a bad metrics file fails before any scoring
        digest, _ = score_stored(run, contender, out)
        store = index_records(read_records(run.store_path))
        label = contender.label or contender.spec
        label = label if label not in scorers else f"{label} #{len(scorers)}"
        scorers[label] = (samples_for(run, store, contender.spec, digest), benchmark)
    prefix = os.path.join(pred_root(work_dir, model), f"{model}_{dataset}_bon_compare")
    tables, rows, paths = {}, {}, {}
    for j, (label, (samples, bench)) in enumerate(scorers.items()):
        table, exclusions = bon_table(samples, ks, names)
        print(f"\n--- scorer {label} ---", file=out)
        print_report(table, exclusions, file=out)
        tag = f"scorer{j}"
        paths.update({f"{tag}_{k}": v for k, v in write_report(table, exclusions, f"{prefix}_{tag}").items()})
        tables[label] = table
        rows[label] = {
            **{k: table.loc[strategy, k] for k in ks},
            "gain": table.loc[strategy, ks[-1]] - table.loc["random", 1] if 1 in ks else float("nan"),
            "benchmark": bench,
        }
    summary = pd.DataFrame.from_dict(rows, orient="index")
    summary.index.name = "scorer"
    from tabulate import tabulate

    print(f"\nScorers compared: {strategy} accuracy (%) by N, and the gain at N = {ks[-1]} over Pass@1", file=out)
    print(tabulate(summary, headers=["scorer", *map(str, summary.columns)], floatfmt=".1f"), file=out)
    known = summary.dropna(subset=["benchmark"])
    r = pearson(list(known["benchmark"]), list(known["gain"]))
    if len(known):
        print(
            f"reward benchmark vs Best-of-{ks[-1]} gain over {len(known)} scorers: Pearson r = "
            + (f"{r:.3f}" if r is not None else "n/a (fewer than two scorers with a benchmark score, or no spread)"),
            file=out,
        )
    summary.to_csv(f"{prefix}.csv")
    paths["compare_csv"] = f"{prefix}.csv"
    paths.update(_plots(summary, prefix, strategy))
    for kind, path in paths.items():
        if kind.startswith("compare") or kind.startswith("benchmark"):
            print(f"{kind}: {path}", file=out)
    return {"tables": tables, "summary": summary, "r": r, "paths": paths}
