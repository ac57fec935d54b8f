"""The run and the report apply ONE selection rule: ``BestOfN`` (the real class) answers a question,
the report's estimator reads the SAME candidate store, and the run's pick is always a candidate to
which the report's PRM row gives positive probability, across planted ties, NaN/inf step scores,
failed PRM calls and candidates without steps.

Stand-ins (what cannot be planted otherwise): the policy's ``_generate`` returns fixed texts, and the
PRM returns fixed step scores per candidate (a real PRM does not tie or emit NaN on demand). The
store, ``BestOfN.generate``, the report's store reading (``collect.store_candidate``) and the
report's BoN@k estimator are the real ones.
"""

import json
import math
from collections import Counter

import pytest
from PIL import Image

from vlmeval_prm.host.bon import FAIL_MSG, BestOfN
from vlmeval_prm.prm.base import PRMScorer, StepScores, failed
from vlmeval_prm.report.collect import store_candidate
from vlmeval_prm.select.bon_at_k import sample_at_k
from vlmeval_prm.store import scoring as scoring_module
from vlmeval_prm.store.jsonl import index_records, read_records

SPEC = "transformers:planted-standin"
N = 4
NAN, INF = math.nan, math.inf
FAIL = "HTTP 500"  # a planted PRM failure
#: Per pattern, per candidate: planted step scores (FAIL: the PRM call fails; []: no steps). Scores
#: are dyadic, so equal aggregates are equal floats.
PATTERNS = {
    "tie_everywhere": [[0.5, 0.5], [0.5], [NAN, 0.5], [0.5, 0.5, 0.5]],
    "three_way_tie": [[0.25, 0.75], [0.5], [0.5, NAN], [0.75, 0.25]],
    "nan_on_the_best": [[0.875, NAN], [0.375], [0.375], [0.125]],
    "one_left": [[NAN], FAIL, [], [0.25, 0.25]],
    "none_left": [[INF], FAIL, [], [0.5, NAN, 0.875]],
    # min() would skip the NaN (0.75 > 0.5) and last() would see 0.875: both must treat it as unscored
    "nan_mid_sequence": [[0.75, NAN, 0.875], [0.5, 0.5], [0.25, 0.5], [0.5, 0.5]],
}
_COMMON = {"tie_everywhere": [0, 1, 3], "nan_on_the_best": [1, 2], "one_left": [3], "none_left": []}
TIED = {  # aggregate -> pattern -> the candidates that may be picked
    "mean": {**_COMMON, "three_way_tie": [0, 1, 3], "nan_mid_sequence": [1, 3]},
    "min": {**_COMMON, "three_way_tie": [1], "nan_mid_sequence": [1, 3]},
    "last": {**_COMMON, "three_way_tie": [0], "nan_mid_sequence": [1, 2, 3]},
}
KEYS = 60  # questions per pattern


def text(pattern: str, i: int) -> str:
    plan = PATTERNS[pattern][i]
    steps = 1 if plan == FAIL else len(plan)
    return "\n\n".join(f"{pattern} c{i} step {s}" for s in range(steps))


class PlantedPRM(PRMScorer):
    """Returns the planted scores of each candidate, found by the pattern and index in its first step."""

    identity = SPEC

    def __init__(self):
        self.calls = 0

    def score(self, question, images, candidates, mode="step"):
        self.calls += 1
        out = []
        for steps in candidates:
            if not steps:
                out.append(failed(steps, "candidate has no steps"))
                continue
            pattern, index = steps[0].split()[:2]
            plan = PATTERNS[pattern][int(index[1:])]
            out.append(failed(steps, FAIL) if plan == FAIL else StepScores(steps=list(steps), scores=list(plan)))
        return out


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (200, 20, 20)).save(path)
    return str(path)


def make_bon(aggregate, monkeypatch):
    base = {"class": "TransformersChat", "model_path": "tiny:policy", "max_new_tokens": 8}
    # the PRM is the planted stand-in below, not a checkpoint: skip the spec check (tests/test_prm_spec.py)
    monkeypatch.setattr(scoring_module, "validate_spec", lambda spec, options: None)
    bon = BestOfN(model=base, n=N, prm=SPEC, aggregate=aggregate, name=f"planted-{aggregate}")
    bon.scoring._scorer = PlantedPRM()

    def generate(message, n, **kw):  # the question names the pattern; candidate i gets text(pattern, i)
        pattern = message[-1]["value"].split()[0]
        return [text(pattern, i) for i in range(n)]

    monkeypatch.setattr(bon.base, "_generate", generate)
    return bon


def question(pattern, j, image):
    return [{"type": "image", "value": image}, {"type": "text", "value": f"{pattern} question {j}?"}]


def report_probabilities(entry, aggregate):
    """P(the report's PRM row picks candidate j), read off its estimator at k = N: with only
    candidate j marked correct, the expected accuracy IS that probability."""
    probs = []
    for j in range(N):
        pool = [store_candidate(entry, i, SPEC, i == j, "MCQ", None) for i in range(N)]
        value, draws = sample_at_k(f"prm_{aggregate}", pool, N)
        assert draws == 0  # exact, not Monte Carlo
        probs.append(value)
    return probs


@pytest.mark.parametrize("aggregate", ["mean", "min", "last"])
def test_the_run_picks_only_what_the_report_counts(aggregate, tiny_paths, image, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMEVAL_PRM_STORE_DIR", str(tmp_path / "store"))
    bon = make_bon(aggregate, monkeypatch)
    runs = {(p, j): bon.generate(question(p, j, image), dataset="Planted") for p in PATTERNS for j in range(KEYS)}
    (path,) = (tmp_path / "store").glob("*_bon_candidates.jsonl")
    store = index_records(read_records(str(path)))  # the report's reader, on the run's store
    picks = {p: Counter() for p in PATTERNS}
    for (pattern, _), out in runs.items():
        summary = json.loads(out["extra_records"])
        probs = report_probabilities(store[summary["key"]], aggregate)
        tied = TIED[aggregate][pattern]
        assert [i for i, p in enumerate(probs) if p > 0] == tied == summary["tied"], (pattern, probs)
        if not tied:  # nothing scored: no answer in the run, probability 0 everywhere in the report
            assert summary["chosen"] is None and out["prediction"].startswith(FAIL_MSG)
            continue
        assert probs == pytest.approx([1 / len(tied) if i in tied else 0.0 for i in range(N)])
        assert probs[summary["chosen"]] > 0
        assert out["prediction"] == text(pattern, summary["chosen"])
        picks[pattern][summary["chosen"]] += 1
    # over many keys the run's draw is spread over every tied candidate (KEYS / len(tied) expected)
    for pattern, counts in picks.items():
        tied = TIED[aggregate][pattern]
        assert set(counts) == set(tied)
        assert all(counts[i] >= KEYS / len(tied) / 2 for i in tied), (pattern, counts)


def test_the_summary_counts_unscored_candidates_and_a_resume_picks_the_same(tiny_paths, image, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMEVAL_PRM_STORE_DIR", str(tmp_path / "store"))
    first = {p: make_bon("mean", monkeypatch).generate(question(p, 0, image), "Planted") for p in PATTERNS}
    expect = {
        "three_way_tie": {"generation": 0, "no_steps": 0, "prm": 0, "non_finite": 1},
        "one_left": {"generation": 0, "no_steps": 1, "prm": 1, "non_finite": 1},
        "none_left": {"generation": 0, "no_steps": 1, "prm": 1, "non_finite": 2},
    }
    for pattern, failures in expect.items():
        summary = json.loads(first[pattern]["extra_records"])
        assert summary["failures"] == failures and summary["unscored"] == sum(failures.values())
        assert [s is None for s in summary["scores"]] == [
            not (isinstance(plan, list) and plan and all(math.isfinite(x) for x in plan)) for plan in PATTERNS[pattern]
        ]
    again = make_bon("mean", monkeypatch)  # a resumed run: a new process reads the same store
    for pattern in ("three_way_tie", "nan_on_the_best", "nan_mid_sequence"):
        assert again.generate(question(pattern, 0, image), "Planted") == first[pattern]
    assert again.prm.calls == 0  # every tie was broken again without rescoring
