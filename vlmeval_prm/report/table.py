"""The paper-style Best-of-N table (strategies x N, accuracy in %) from one run, with what each
strategy had to leave out, written as CSV, xlsx and a PNG plot of accuracy against N."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

import pandas as pd
from tqdm import tqdm

from vlmeval_prm.select.bon_at_k import BoNResult, MonteCarlo, bon_curve
from vlmeval_prm.select.strategies import REASONS, STRATEGIES, SampleCandidates

#: Show a progress bar (on a terminal) when questions x ks x strategies exceeds this.
PROGRESS_FROM = 20_000


def _exclusion_row(at_max: BoNResult, results: list[BoNResult]) -> dict:
    """Counts taken at the largest k (capping depends on k); Monte Carlo use over all ks."""
    return {
        "samples": at_max.samples,
        "dropped_samples": at_max.dropped_samples,
        "empty_samples": at_max.empty_samples,
        "capped_samples": at_max.capped_samples,
        **{r: at_max.excluded.get(r, 0) for r in REASONS},
        "monte_carlo_ks": sum(r.monte_carlo_samples > 0 for r in results),
        "monte_carlo_draws": max(r.monte_carlo_draws for r in results),
    }


def bon_table(
    samples: Sequence[SampleCandidates],
    ks: Sequence[int],
    strategies: Sequence[str] | None = None,
    mc: MonteCarlo | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accuracy in % with rows = strategies and columns = N, exclusions with rows = strategies).

    Exclusion columns: ``samples`` in the denominator; ``dropped_samples`` (no candidate with known
    correctness); ``empty_samples`` (nothing the strategy can use, scored 0); ``capped_samples``
    (fewer than max(ks) candidates); one column per reason in ``selection.REASONS`` (candidates);
    ``monte_carlo_ks`` (how many ks needed Monte Carlo) and ``monte_carlo_draws`` (per question).
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    names = list(strategies or STRATEGIES)
    long = len(samples) * len(ks) * len(names) >= PROGRESS_FROM
    accuracy, exclusions = {}, {}
    for name in tqdm(names, desc="BoN@k", unit="strategy", disable=None if long else True, leave=False):
        results = bon_curve(samples, name, ks, mc)
        accuracy[name] = [100 * r.accuracy for r in results]
        exclusions[name] = _exclusion_row(results[-1], results)
    table = pd.DataFrame.from_dict(accuracy, orient="index", columns=ks)
    table.index.name, table.columns.name = "strategy", "N"
    excl = pd.DataFrame.from_dict(exclusions, orient="index")
    excl.index.name = "strategy"
    return table, excl


def _plot(table: pd.DataFrame, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ks = [int(k) for k in table.columns]
    for name, row in table.iterrows():
        ax.plot(ks, row.to_numpy(), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("N (candidates per question)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path)


def write_report(table_df: pd.DataFrame, exclusions_df: pd.DataFrame, out_prefix: str) -> dict[str, str]:
    """Write ``{prefix}_bon.csv``, ``{prefix}_exclusions.csv``, ``{prefix}.xlsx`` (sheets "bon" and
    "exclusions") and ``{prefix}_bon.png``; return their paths by kind."""
    paths = {
        "table_csv": f"{out_prefix}_bon.csv",
        "exclusions_csv": f"{out_prefix}_exclusions.csv",
        "xlsx": f"{out_prefix}.xlsx",
        "png": f"{out_prefix}_bon.png",
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    table_df.to_csv(paths["table_csv"])
    exclusions_df.to_csv(paths["exclusions_csv"])
    with pd.ExcelWriter(paths["xlsx"], engine="openpyxl") as xl:
        table_df.to_excel(xl, sheet_name="bon")
        exclusions_df.to_excel(xl, sheet_name="exclusions")
    _plot(table_df, paths["png"])
    return paths


def print_report(table_df: pd.DataFrame, exclusions_df: pd.DataFrame, file: TextIO | None = None) -> None:
    """Both tables on the terminal, accuracy to one decimal as in the paper."""
    from tabulate import tabulate

    out = file or sys.stdout
    print("Best-of-N accuracy (%) by N", file=out)
    print(tabulate(table_df, headers=["strategy", *map(str, table_df.columns)], floatfmt=".1f"), file=out)
    print("\nLeft out (candidates per reason, questions per kind)", file=out)
    print(tabulate(exclusions_df, headers=["strategy", *exclusions_df.columns]), file=out)
