"""The paper's table from one or more runs: rows = strategies, columns = benchmarks and their overall,
one table per N, and the scaling plot (overall accuracy against N per strategy).

Each benchmark contributes its headline metric (``benchmarks``: DynaMath's worst case, WeMath's
strict score, MMMU's validation split, plain accuracy for the rest; other datasets: accuracy), and
every metric of every dataset goes to a long "metrics" table with its Monte Carlo standard error
where one applies. "Overall" is the mean of the benchmark columns, as VisualPRM's overall of seven;
with fewer than the seven it is called "Mean of <m>". Pass@1 is each question's first candidate.

Outputs, per model: ``<work_dir>/<model>/<model>_bon_paper.csv`` (N, strategy, one column per
dataset, Overall, and the Monte Carlo standard error of Overall), ``..._bon_paper_metrics.csv``,
``..._bon_paper.xlsx`` (a sheet per N, "scaling", "metrics") and ``..._bon_paper.png``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import pandas as pd

from vlmeval_prm.report.benchmarks import PAPER_ORDER, Benchmark, Metric
from vlmeval_prm.report.bon_metrics import PASS_AT_1, first_candidate, metric_curve, row_curves
from vlmeval_prm.select.bon_at_k import MonteCarlo
from vlmeval_prm.select.strategies import SampleCandidates

METRIC_COLUMNS = [
    "dataset",
    "benchmark",
    "metric",
    "strategy",
    "N",
    "value",
    "se",
    "estimate",
    "groups",
    "dropped_groups",
]


@dataclass
class DatasetCurves:
    dataset: str
    benchmark: str | None  # the registry family, None for a dataset outside it
    headline: str  # the metric shown in the paper table
    metrics: pd.DataFrame  # METRIC_COLUMNS, values in %

    @property
    def column(self) -> str:
        plain = self.headline in ("accuracy", "accuracy_validation")
        return self.dataset if plain else f"{self.dataset} [{self.headline}]"


def dataset_curves(
    dataset: str,
    samples: Sequence[SampleCandidates],
    table: pd.DataFrame,
    ks: Sequence[int],
    strategies: Sequence[str],
    benchmark: Benchmark | None = None,
    mc: MonteCarlo | None = None,
) -> DatasetCurves:
    """Every metric of one dataset, for Pass@1 and every strategy at every k (values in %)."""
    if len(samples) != len(table):
        raise ValueError(f"{dataset}: {len(samples)} questions for {len(table)} prediction rows")
    metrics = benchmark.metrics(table) if benchmark else [Metric("accuracy", tuple((r,) for r in range(len(table))))]
    rows = []
    for strategy in (PASS_AT_1, *strategies):
        if strategy == PASS_AT_1:
            first = first_candidate(samples)
            p = np.repeat(first[:, None], len(ks), axis=1)
            draws = np.zeros(p.shape, dtype=int)
        else:
            p, draws = row_curves(samples, strategy, ks, mc)
        for metric in metrics:
            for k, est in zip(ks, metric_curve(metric, p, draws)):
                rows.append(
                    {
                        "dataset": dataset,
                        "benchmark": benchmark.name if benchmark else None,
                        "metric": metric.name,
                        "strategy": strategy,
                        "N": int(k),
                        "value": 100 * est.value,
                        "se": 100 * est.se,
                        "estimate": "monte carlo" if est.monte_carlo else "exact",
                        "groups": est.groups,
                        "dropped_groups": est.dropped_groups,
                    }
                )
    return DatasetCurves(
        dataset, benchmark.name if benchmark else None, metrics[0].name, pd.DataFrame(rows, columns=METRIC_COLUMNS)
    )


def _order(curves: Sequence[DatasetCurves]) -> list[DatasetCurves]:
    rank = {name: i for i, name in enumerate(PAPER_ORDER)}
    return sorted(curves, key=lambda c: (rank.get(c.benchmark or "", len(rank)), c.dataset))


def overall_name(curves: Sequence[DatasetCurves]) -> str:
    families = {c.benchmark for c in curves}
    return "Overall" if set(PAPER_ORDER) <= families and len(curves) == len(PAPER_ORDER) else f"Mean of {len(curves)}"


def scale_title(curves: Sequence[DatasetCurves]) -> str:
    """What the scaling table and plot show: the overall, or the one dataset when there is one."""
    return curves[0].column if len(curves) == 1 else overall_name(curves)


def paper_table(curves: Sequence[DatasetCurves]) -> pd.DataFrame:
    """Long table: one row per (N, strategy), one column per dataset's headline metric, the overall
    (mean of the dataset columns) and its Monte Carlo standard error (0 when every cell is exact)."""
    curves = _order(curves)
    overall = overall_name(curves)
    parts = []
    for c in curves:
        head = c.metrics[c.metrics["metric"] == c.headline].set_index(["N", "strategy"])
        parts.append(head["value"].rename(c.column))
        parts.append(head["se"].rename(f"_se_{c.column}"))
    wide = pd.concat(parts, axis=1)
    columns = [c.column for c in curves]
    wide[overall] = wide[columns].mean(axis=1, skipna=False)
    ses = wide[[f"_se_{c}" for c in columns]]
    wide[f"{overall} MC s.e."] = ses.pow(2).sum(axis=1).pow(0.5) / len(columns)
    wide = wide.drop(columns=list(ses.columns))
    order = {s: i for i, s in enumerate(dict.fromkeys(curves[0].metrics["strategy"]))}
    wide = wide.reset_index().sort_values(
        ["N", "strategy"], key=lambda col: col.map(order) if col.name == "strategy" else col
    )
    return wide.reset_index(drop=True)


def scaling(table: pd.DataFrame) -> pd.DataFrame:
    """Overall accuracy: rows = strategies, columns = N."""
    overall = next(c for c in table.columns if c.endswith(" MC s.e.")).removesuffix(" MC s.e.")
    out = table.pivot(index="strategy", columns="N", values=overall)
    return out.loc[list(dict.fromkeys(table["strategy"]))]


def plot_curves(scale: pd.DataFrame, title: str, path: str) -> None:
    """Accuracy (%) against N, one line per row of ``scale`` (columns: the Ns), written to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ks = [int(k) for k in scale.columns]
    for name, row in scale.iterrows():
        ax.plot(ks, row.to_numpy(), marker="o", label=name, linestyle="--" if name == PASS_AT_1 else "-")
    if len(ks) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("N (candidates per question)")
    ax.set_ylabel(f"{title} (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path)


def write_paper(curves: Sequence[DatasetCurves], prefix: str) -> dict[str, str]:
    """CSV, metrics CSV, xlsx and PNG (see the module docstring); returns their paths by kind."""
    table = paper_table(curves)
    scale = scaling(table)
    metrics = pd.concat([c.metrics for c in _order(curves)], ignore_index=True)
    paths = {
        "paper_csv": f"{prefix}.csv",
        "metrics_csv": f"{prefix}_metrics.csv",
        "xlsx": f"{prefix}.xlsx",
        "png": f"{prefix}.png",
    }
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    table.to_csv(paths["paper_csv"], index=False)
    metrics.to_csv(paths["metrics_csv"], index=False)
    with pd.ExcelWriter(paths["xlsx"], engine="openpyxl") as xl:
        for k, part in table.groupby("N", sort=True):
            part.drop(columns="N").to_excel(xl, sheet_name=f"N={k}", index=False)
        scale.to_excel(xl, sheet_name="scaling")
        metrics.to_excel(xl, sheet_name="metrics", index=False)
    plot_curves(scale, scale_title(curves), paths["png"])
    return paths


def print_paper(curves: Sequence[DatasetCurves], file: TextIO | None = None) -> None:
    """The table at the largest N, the scaling of the overall, and which cells are estimates."""
    from tabulate import tabulate

    out = file or sys.stdout
    table = paper_table(curves)
    top = table[table["N"] == table["N"].max()].drop(columns="N")
    overall = overall_name(curves)
    if len(curves) == 1:  # the mean of one column is that column: print it once, with its s.e.
        top = top.drop(columns=overall).rename(columns={f"{overall} MC s.e.": "MC s.e."})
    print(f"\nBest-of-N by benchmark (%), N = {table['N'].max()}", file=out)
    print(tabulate(top, headers="keys", showindex=False, floatfmt=".1f"), file=out)
    print(f"\n{scale_title(curves)} (%) by N", file=out)
    scale = scaling(table)
    print(tabulate(scale, headers=["strategy", *map(str, scale.columns)], floatfmt=".1f"), file=out)
    estimated = pd.concat([c.metrics for c in curves])
    estimated = estimated[estimated["estimate"] == "monte carlo"]
    if len(estimated):
        worst = estimated.loc[estimated["se"].idxmax()]
        print(
            f"\n{len(estimated)} cells are Monte Carlo estimates (vote strategies with too many subsets); largest "
            f"standard error {worst['se']:.2f} points ({worst['dataset']} {worst['metric']}, {worst['strategy']}, "
            f"N = {worst['N']}); see the metrics table",
            file=out,
        )
    dropped = max((int(c.metrics["dropped_groups"].max()) for c in curves), default=0)
    if dropped:
        print(
            f"left out for lack of a judged candidate: up to {dropped} questions (or question groups) per cell; "
            f"see dropped_groups in the metrics table",
            file=out,
        )


def paper_report(
    results: dict, ks: Sequence[int] | None = None, mc: MonteCarlo | None = None, file: TextIO | None = None
) -> dict[tuple[str, str], dict[str, str]]:
    """The joined table for every model of ``collect.report``'s results (runs that failed are left
    out), written beside VLMEvalKit's outputs as ``<model>_bon_paper*``; returns the paths by model."""
    from vlmeval.smp import load

    from vlmeval_prm.report.benchmarks import BenchmarkFormatError, benchmark_named
    from vlmeval_prm.report.collect import default_ks, pred_root, prediction_file

    out = file or sys.stdout
    by_model: dict[tuple[str, str], list] = {}
    for (work_dir, model, dataset), res in results.items():
        if "run" in res:
            by_model.setdefault((work_dir, model), []).append((dataset, res))
    written = {}
    for (work_dir, model), items in by_model.items():
        common = list(ks) if ks else default_ks(min(res["n"] for _, res in items))
        try:
            curves = [
                dataset_curves(
                    dataset,
                    res["run"].samples,
                    load(prediction_file(work_dir, model, dataset)),
                    common,
                    list(res["table"].index),
                    benchmark_named(dataset),
                    mc,
                )
                for dataset, res in items
            ]
        except BenchmarkFormatError as exc:
            print(f"cannot build the benchmark table of {model}: {exc}", file=out)
            continue
        print(f"\n=== {model}: {', '.join(d for d, _ in items)} ===", file=out)
        print_paper(curves, file=out)
        written[(work_dir, model)] = write_paper(curves, os.path.join(pred_root(work_dir, model), f"{model}_bon_paper"))
        for kind, path in written[(work_dir, model)].items():
            print(f"{kind}: {path}", file=out)
    return written
