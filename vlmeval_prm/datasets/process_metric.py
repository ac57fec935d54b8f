"""VisualProcessBench's step metric: macro F1 over the correct and incorrect step classes.

Pure pandas/numpy so it can be checked against scikit-learn and reused outside VLMEvalKit.

Conventions (the paper states the metric, not these details):

- Gold labels are 1 (correct), 0 (neutral), -1 (incorrect). Neutral steps are dropped before scoring.
- Macro F1 = mean of F1(correct) and F1(incorrect). A class whose F1 is undefined (no gold and no
  predicted step of it) scores 0, as scikit-learn's ``f1_score(..., zero_division=0)`` does.
- "Overall" pools every step of every source; it is not the mean of the per-source numbers.
- A PRM step is predicted correct when its P(+) > threshold (strict; default 0.5; a published
  re-evaluation of VisualPRM-8B uses 0.85). The threshold is a column of every row. The sweep
  reports, per row, the threshold of the grid that maximises that row's F1 (ties: the lowest
  threshold). It is an oracle for diagnosing calibration, never the headline number.
- A failed sample (inference failure, unparseable reply, malformed scores) has no predictions.
  ``F1`` excludes its steps (the ``failed`` column counts such samples); ``F1_pessimistic`` counts
  each of its steps as predicted wrong, a lower bound a reader can set next to ``F1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

CORRECT, NEUTRAL, INCORRECT = 1, 0, -1
LABELS = (CORRECT, NEUTRAL, INCORRECT)
DEFAULT_THRESHOLD = 0.5
#: Thresholds of the sweep: 0.00, 0.01, ..., 1.00.
THRESHOLD_GRID = np.round(np.linspace(0.0, 1.0, 101), 2)
OVERALL = "Overall"


def class_f1(gold: np.ndarray, pred: np.ndarray, cls: int) -> float:
    """F1 of one class; 0 when it is undefined (no gold and no predicted member)."""
    tp = int(np.sum((gold == cls) & (pred == cls)))
    denom = int(np.sum(gold == cls)) + int(np.sum(pred == cls))
    return 2 * tp / denom if denom else 0.0


def macro_f1(gold: Sequence[int], pred: Sequence[int]) -> tuple[float, float, float]:
    """(macro F1, F1 correct, F1 incorrect) for non-neutral gold labels and +-1 predictions, as fractions."""
    g, p = np.asarray(gold), np.asarray(pred)
    if g.shape != p.shape:
        raise ValueError(f"{g.size} gold labels but {p.size} predictions")
    f_pos, f_neg = class_f1(g, p, CORRECT), class_f1(g, p, INCORRECT)
    return (f_pos + f_neg) / 2, f_pos, f_neg


def threshold_labels(scores: Sequence[float], threshold: float) -> np.ndarray:
    """P(+) -> +1 where score > threshold (strictly), else -1."""
    return np.where(np.asarray(scores, dtype=float) > threshold, CORRECT, INCORRECT)


def best_threshold(
    gold: Sequence[int], scores: Sequence[float], grid: Sequence[float] = THRESHOLD_GRID
) -> tuple[float, float]:
    """(threshold, macro F1) of the grid point with the highest macro F1; ties go to the lowest threshold."""
    g = np.asarray(gold)
    f1s = [macro_f1(g, threshold_labels(scores, t))[0] for t in grid]
    i = int(np.argmax(f1s))
    return float(grid[i]), f1s[i]


def explode_steps(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per non-neutral gold step.

    ``samples`` has ``data_source``, ``labels`` (list of gold labels) and ``pred`` (per-step list
    of P(+) floats or of +-1 verdicts, or None for a failed sample; a list must match ``labels``).
    Returns columns ``sample`` (the samples row label), ``data_source``, ``gold``, ``pred`` (NaN
    for a failed sample) and ``failed``.
    """
    rows = []
    for key, src, labels, pred in zip(samples.index, samples["data_source"], samples["labels"], samples["pred"]):
        if pred is not None and len(pred) != len(labels):
            raise ValueError(f"sample {key}: {len(pred)} predictions for {len(labels)} steps")
        for i, gold in enumerate(labels):
            if gold != NEUTRAL:
                rows.append((key, src, int(gold), np.nan if pred is None else float(pred[i]), pred is None))
    table = pd.DataFrame(rows, columns=["sample", "data_source", "gold", "pred", "failed"])
    return table.astype({"gold": int, "pred": float, "failed": bool})


def _percent(gold: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """macro_f1 in percent; NaN for no steps at all (nothing was measured, which is not a score of 0)."""
    if gold.size == 0:
        return (np.nan,) * 3
    return tuple(100 * x for x in macro_f1(gold, pred))


def _row(name: str, samples: pd.DataFrame, steps: pd.DataFrame, kind: str, threshold: float) -> dict:
    ok = steps[~steps["failed"]]
    gold = ok["gold"].to_numpy(dtype=int)
    pred = threshold_labels(ok["pred"], threshold) if kind == "score" else ok["pred"].to_numpy().astype(int)
    f1, f_pos, f_neg = _percent(gold, pred)
    # Pessimistic: every step of a failed sample gets the opposite of its gold label.
    gold_failed = steps.loc[steps["failed"], "gold"].to_numpy(dtype=int)
    pessimistic = _percent(np.concatenate([gold, gold_failed]), np.concatenate([pred, -gold_failed]))[0]
    row = {
        "data_source": name,
        "samples": len(samples),
        "failed": int(samples["pred"].map(lambda p: p is None).sum()),
        "steps": len(ok),
        "F1": f1,
        "F1_correct": f_pos,
        "F1_incorrect": f_neg,
        "F1_pessimistic": pessimistic,
    }
    if kind == "score":
        t_best, f_best = best_threshold(gold, ok["pred"].to_numpy()) if gold.size else (np.nan, np.nan)
        row.update(threshold=threshold, best_threshold=t_best, F1_best=100 * f_best)
    return row


def summarize(samples: pd.DataFrame, kind: str, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Per-source rows (sorted by name), then ``Overall`` pooled over every step; F1 values in percent.

    ``samples`` is as for :func:`explode_steps`. ``kind`` is "score" (P(+) predictions, thresholded
    and swept) or "label" (+-1 verdicts). Columns: ``samples``, ``failed`` (samples without
    predictions), ``steps`` (non-neutral steps scored), ``F1``, ``F1_correct``, ``F1_incorrect``,
    ``F1_pessimistic``, and for scores ``threshold``, ``best_threshold``, ``F1_best``.
    """
    if kind not in ("score", "label"):
        raise ValueError(f"kind must be 'score' or 'label', got {kind!r}")
    steps = explode_steps(samples)
    rows = [
        _row(str(src), grp, steps[steps["data_source"] == src], kind, threshold)
        for src, grp in samples.groupby("data_source", sort=True)
    ]
    rows.append(_row(OVERALL, samples, steps, kind, threshold))
    return pd.DataFrame(rows)
