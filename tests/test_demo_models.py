"""The demo's trained models show the effect Best-of-N is for, on the held-out split.

Needs the cached build (``python -m vlmeval_prm.demo.build``, ``vlmeval-prm demo --shapes``): its
training is not tuned to the CPU budget yet, so CI does not build it and these tests are skipped
where the build is absent. Everything is seeded, so the numbers are the same on every run on one
machine; the margins leave room for floating-point differences between CPUs (see each test).
"""

import json
from collections import defaultdict

import pandas as pd
import pytest

from vlmeval_prm.datasets.process_metric import macro_f1, threshold_labels
from vlmeval_prm.demo.build import ensure_built, is_built
from vlmeval_prm.demo.paths import HELDOUT_LABELS, prm_path
from vlmeval_prm.demo.task import make_problem, mcq_prompt, problem_image

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not is_built(), reason="the trained shapes demo models are not built here"),
]

#: Percentage points by which PRM Best-of-8 must beat Pass@1 and random@8. Random weights (or a PRM
#: that reads the wrong token or position) rank candidates independently of correctness, so their
#: expected PRM@8 equals random@8 and Pass@1; over 100 held-out questions x 8 candidates the
#: spread of such a ranking is a few points, far below this margin.
MARGIN = 10.0


@pytest.fixture(scope="module")
def built():
    return ensure_built()


def test_prm_separates_good_from_bad_steps_on_heldout_questions(built, tmp_path):
    from vlmeval_prm.prm.hf_backend import TransformersPRM

    rows = [json.loads(line) for line in (built / HELDOUT_LABELS).read_text().splitlines()]
    by_question = defaultdict(list)
    for r in rows:
        by_question[r["index"]].append(r)
    prm = TransformersPRM(prm_path())
    gold, scores = [], []
    for index, group in by_question.items():
        p = make_problem("test", index)
        image = tmp_path / f"{index}.png"
        problem_image(p).save(image)
        results = prm.score(mcq_prompt(p), [str(image)], [r["steps"] for r in group])
        for r, res in zip(group, results):
            assert res.error is None
            gold += r["labels"]
            scores += res.scores
    assert 0.1 < gold.count(-1) / len(gold) < 0.9  # both classes are there to be told apart
    f1, f_pos, f_neg = macro_f1(gold, threshold_labels(scores, 0.5))
    assert f1 > 0.5, (f1, f_pos, f_neg)


def test_demo_prm_best_of_8_beats_pass_at_1_and_random(built, tmp_path, monkeypatch):
    from vlmeval_prm.host import cli

    monkeypatch.setenv("LMUData", str(tmp_path / "LMUData"))
    work = tmp_path / "outputs"
    assert cli.main(["demo", "--work-dir", str(work)]) == 0
    folder = work / cli.SHAPES_MODEL
    bon = pd.read_csv(
        next(folder.rglob(f"{cli.SHAPES_MODEL}_{cli.SHAPES_DATA}_bon_report_bon.csv")), index_col="strategy"
    )
    paper = pd.read_csv(next(folder.rglob(f"{cli.SHAPES_MODEL}_bon_paper.csv")))
    pass1 = float(paper[(paper["N"] == 8) & (paper["strategy"] == "pass@1")][cli.SHAPES_DATA].iloc[0])
    prm8, random8 = float(bon.loc["prm_mean", "8"]), float(bon.loc["random", "8"])
    assert prm8 >= pass1 + MARGIN and prm8 >= random8 + MARGIN, bon.to_string()
