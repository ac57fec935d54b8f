"""The seven benchmarks' per-candidate verdicts against VLMEvalKit's own evaluation, the judge cache,
and judge failures.

Offline stand-ins (no network): small TSVs in each dataset's VLMEvalKit format replace the downloads,
and a scripted OpenAI-compatible server replaces the judge model (``standins``). VLMEvalKit's dataset
classes, ``evaluate()``, helpers and its ``OpenAIWrapper`` judge client are the real ones.
"""

import inspect
import json
import os

import numpy as np
import pandas as pd
import pytest

from standins.offline_benchmarks import (
    JUDGE_FAILS,
    dynamath_rows,
    dynamath_scripts,
    judge_reply,
    mathvista_rows,
    mathvista_scripts,
    offline_class,
    write_tsv,
)
from standins.openai_standin import serve_scripted
from vlmeval_prm.report.benchmarks import DYNAMATH_SYSTEM_PROMPT, find_benchmark
from vlmeval_prm.report.bon_metrics import estimate
from vlmeval_prm.report.judge_cache import JudgeCache
from vlmeval_prm.report.judging import CannotJudge, judge_benchmark

JUDGE = "gpt-4o-mini"


@pytest.fixture(scope="module")
def lmudata(tmp_path_factory):
    root = tmp_path_factory.mktemp("LMUData")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMUData", str(root))
        yield root


@pytest.fixture(scope="module")
def judge_server():
    with serve_scripted(judge_reply, model=JUDGE) as server:
        yield server


@pytest.fixture
def judge_kwargs(judge_server):
    return {
        "model": JUDGE,
        "api_base": f"{judge_server.url}/v1/chat/completions",
        "key": "sk-standin",
        "retry": 1,
        "wait": 0,
        "nproc": 2,
    }


def prediction_table(dataset):
    """What vlmeval.run writes: the dataset rows without images, with a prediction column."""
    return dataset.data.drop(columns=["image"]).assign(prediction="")


def vlmevalkit_alone(dataset, table, texts, folder, judge_kwargs, name="Policy"):
    """VLMEvalKit's own evaluate() on one candidate's answers, in their own folder: (score, files)."""
    from vlmeval.smp import dump, get_pred_file_path

    folder.mkdir(parents=True, exist_ok=True)
    eval_file = get_pred_file_path(str(folder), name, dataset.dataset_name)
    dump(table.assign(prediction=texts), eval_file)
    return dataset.evaluate(eval_file, **dict(judge_kwargs)), eval_file


# -- MathVista --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mathvista(lmudata):
    from vlmeval.dataset import MathVista

    write_tsv(lmudata, "MathVista_MINI", mathvista_rows())
    return offline_class(MathVista, "MathVista_MINI")("MathVista_MINI")


def candidate_texts(table, scripts, tag, n=4):
    """``texts[c][row]``: candidate c of every row, from the scripted candidates of its question."""
    return [[scripts[f"{tag}{int(i)}"][c] for i in table["index"]] for c in range(n)]


def test_registry_covers_the_paper_benchmarks(mathvista):
    from vlmeval.dataset import Dynamath, LogicVista, MathVerse, MathVision, MMMUDataset, WeMath

    names = {find_benchmark(mathvista).name}
    for cls, name in [
        (MathVision, "MathVision_MINI"),
        (MathVerse, "MathVerse_MINI_Vision_Only"),
        (Dynamath, "DynaMath"),
        (WeMath, "WeMath"),
        (LogicVista, "LogicVista"),
        (MMMUDataset, "MMMU_DEV_VAL"),
    ]:
        probe = cls.__new__(cls)
        probe.dataset_name = name
        names.add(find_benchmark(probe).name)
    assert names == {"MathVista", "MathVision", "MathVerse", "DynaMath", "WeMath", "LogicVista", "MMMU"}


def test_mathvista_verdicts_are_vlmevalkits_for_each_candidate_alone(mathvista, judge_server, judge_kwargs, tmp_path):
    table = prediction_table(mathvista)
    texts = candidate_texts(table, mathvista_scripts(), "Q")
    cache = JudgeCache(str(tmp_path / "judge.jsonl"))
    before = judge_server.chat_calls
    ours = judge_benchmark(find_benchmark(mathvista), mathvista, table, texts, cache, judge_kwargs)
    ours_calls = judge_server.chat_calls - before

    from vlmeval.dataset.utils.mathvista import post_check

    for i, cand in enumerate(texts):
        score, eval_file = vlmevalkit_alone(mathvista, table, cand, tmp_path / f"alone_{i}", judge_kwargs)
        stored = pd.read_excel(eval_file.replace(".xlsx", f"_{JUDGE}.xlsx"))
        theirs = [bool(post_check(stored.iloc[r], prefetch=False)) for r in range(len(stored))]
        assert ours[i] == theirs, f"candidate {i}"
        overall = score.set_index("Task&Skill").loc["Overall", "acc"]
        assert overall == pytest.approx(100 * np.mean(ours[i]))
    # rule first: answers that are exactly the answer never reach the judge; duplicates reach it once
    judged = {
        (r, t)
        for cand in texts
        for r, t in enumerate(cand)
        if not (
            t.strip() == str(table["answer"].iloc[r])
            or table["question_type"].iloc[r] == "multi_choice"
            and t.strip() in ("C",)
        )
    }
    assert ours_calls <= len(judged) + 1  # + VLMEvalKit's working() check
    assert ours_calls < sum(len(c) for c in texts)


def test_second_report_makes_no_judge_call(mathvista, judge_server, judge_kwargs, tmp_path):
    table = prediction_table(mathvista)
    texts = candidate_texts(table, mathvista_scripts(), "Q")
    bench = find_benchmark(mathvista)
    first = judge_benchmark(bench, mathvista, table, texts, JudgeCache(str(tmp_path / "j.jsonl")), judge_kwargs)
    before = judge_server.chat_calls
    again = judge_benchmark(
        bench,
        mathvista,
        table,
        texts,
        JudgeCache(str(tmp_path / "j.jsonl")),
        {**judge_kwargs, "nproc": 1, "api_base": "http://127.0.0.1:9/v1/chat/completions"},
    )
    assert again == first
    assert judge_server.chat_calls == before  # nothing sent: not even the working() check
    assert "sk-standin" not in (tmp_path / "j.jsonl").read_text()  # no API key on disk


def test_judge_failure_is_unscored_and_asked_again(mathvista, judge_server, judge_kwargs, tmp_path):
    table = prediction_table(mathvista)
    texts = candidate_texts(table, mathvista_scripts(), "Q")
    texts[1][1] = f"The answer is 2.5 {JUDGE_FAILS}"  # row 2, candidate 1: the judge API fails on it
    bench = find_benchmark(mathvista)
    path = str(tmp_path / "j.jsonl")
    got = judge_benchmark(bench, mathvista, table, texts, JudgeCache(path), judge_kwargs)
    assert got[1][1] is None  # unscored, never wrong
    assert all(v is not None for i, c in enumerate(got) for r, v in enumerate(c) if (i, r) != (1, 1))
    # VLMEvalKit itself would count it wrong: the only difference
    _, eval_file = vlmevalkit_alone(mathvista, table, texts[1], tmp_path / "alone", judge_kwargs)
    stored = pd.read_excel(eval_file.replace(".xlsx", f"_{JUDGE}.xlsx"))
    assert "All 5 retries failed" in stored["log"].iloc[1]
    # the next report asks again for that one answer only (plus the working() check)
    before = judge_server.chat_calls
    again = judge_benchmark(bench, mathvista, table, texts, JudgeCache(path), judge_kwargs)
    assert again == got
    assert judge_server.chat_calls - before == 1 + 5  # working() + VLMEvalKit's 5 attempts


def test_a_benchmark_that_needs_a_judge_refuses_exact_matching(mathvista, tmp_path):
    table = prediction_table(mathvista)
    with pytest.raises(CannotJudge, match="--judge"):
        judge_benchmark(
            find_benchmark(mathvista),
            mathvista,
            table,
            [["14"] * len(table)],
            JudgeCache(str(tmp_path / "j.jsonl")),
            {"model": "exact_matching"},
        )
    assert not (tmp_path / "j.jsonl").exists()


def test_a_judge_that_does_not_answer_stops_before_judging(mathvista, tmp_path):
    table = prediction_table(mathvista)
    with serve_scripted(lambda prompt, payload: None) as dead:
        with pytest.raises(CannotJudge, match="working"):
            judge_benchmark(
                find_benchmark(mathvista),
                mathvista,
                table,
                [["The answer is 3"] * len(table)],
                JudgeCache(str(tmp_path / "j.jsonl")),
                {"model": JUDGE, "api_base": f"{dead.url}/v1/chat/completions", "key": "k", "retry": 1, "wait": 0},
            )


# -- DynaMath -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dynamath(lmudata):
    from vlmeval.dataset import Dynamath

    write_tsv(lmudata, "DynaMath", dynamath_rows())
    return offline_class(Dynamath, "DynaMath")("DynaMath")


def test_dynamath_verdicts_and_worst_case_are_vlmevalkits(dynamath, judge_kwargs, tmp_path):
    table = prediction_table(dynamath)
    texts = candidate_texts(table, dynamath_scripts(dynamath_rows()), "D")
    bench = find_benchmark(dynamath)
    ours = judge_benchmark(bench, dynamath, table, texts, JudgeCache(str(tmp_path / "j.jsonl")), judge_kwargs)
    worst, average = bench.metrics(table)
    for i, cand in enumerate(texts):
        score, eval_file = vlmevalkit_alone(dynamath, table, cand, tmp_path / f"alone_{i}", judge_kwargs)
        stored = pd.read_excel(eval_file.replace(".xlsx", f"_{JUDGE}.xlsx"))
        assert ours[i] == [bool(x) for x in stored["correct"]], f"candidate {i}"
        by_setting = score.set_index("Setting")["Overall"]
        p = np.array(ours[i], dtype=float)
        assert estimate(worst, p).value == pytest.approx(by_setting["Worst Case"])
        assert estimate(average, p).value == pytest.approx(by_setting["Average"])
    assert 0 < estimate(worst, np.array(ours[0], dtype=float)).value  # the metric is not trivially 0


def test_dynamath_system_prompt_is_vlmevalkits():
    from vlmeval.dataset.dynamath import Dynamath

    assert DYNAMATH_SYSTEM_PROMPT in inspect.getsource(Dynamath.evaluate)


def test_judge_cache_survives_a_torn_line(tmp_path):
    from vlmeval_prm.report.judge_cache import Judged

    path = tmp_path / "j.jsonl"
    cache = JudgeCache(str(path))
    cache.put("a", Judged({"res": "14"}, False), benchmark="MathVista", judge=JUDGE)
    with open(path, "a") as f:
        f.write('{"key": "b", "resu')  # a report killed mid-write
    cache = JudgeCache(str(path))
    assert cache.get("a").result == {"res": "14"} and cache.get("b") is None
    cache.put("c", Judged(None, True, "the judge failed"))
    again = JudgeCache(str(path))
    assert again.get("c").failed and again.needs_judging("c") and not again.needs_judging("a")
    assert all(json.loads(line) for line in path.read_text().splitlines()[-1:])


# -- the other five, table-driven -------------------------------------------------------------------------
def option_candidates(rows, judge_path=True):
    """Four candidates per row of an option dataset: right, wrong, one only the judge can read (two
    letters in view), and the right option's text (VLMEvalKit matches option texts too)."""
    out = {}
    for row in rows:
        answer = str(row["answer"])
        letters = [c for c in "ABCDE" if row.get(c) is not None] or list("ABCD")
        wrong = next(c for c in letters if c not in answer)
        text = row.get(answer) if answer in "ABCDE" and row.get(answer) else answer
        both = f"Both {wrong} and {answer} look plausible.\n\nThe answer is {answer}"
        out[int(row["index"])] = [
            f"The answer is {answer}",
            f"The answer is {wrong}",
            both if judge_path else f"Answer: {answer}",
            f"I think it is {text}.",
        ]
    return out


def wemath_candidates(rows):
    """'Answer: X' throughout (what WeMath's exact-matching rule reads): all right; only the multi-step
    problems right; alternating; and a judge-path variant. Every candidate gets some multi-step
    problem right (VLMEvalKit's WeMath rates divide by that count)."""
    out = {}
    for r, row in enumerate(rows):
        answer, multi = row["answer"], row["key"].endswith("multi")
        wrong = "ABCD"[("ABCD".index(answer) + 1) % 4]
        judge_path = f"Maybe {wrong} or {answer}.\n\nThe answer is {answer}"
        out[int(row["index"])] = [
            f"Answer: {answer}",
            f"Answer: {answer if multi else wrong}",
            f"Answer: {answer if r % 2 or multi and row['ID'] == 1 else wrong}",
            f"Answer: {answer}" if r % 3 else judge_path,
        ]
    return out


def free_candidates(rows, extra):
    out = {}
    for row in rows:
        answer = str(row["answer"])
        out[int(row["index"])] = [
            f"The answer is {answer}",
            "The answer is 99",
            extra.get(int(row["index"]), answer),
            f"Step 1: look.\n\nThe answer is {answer}.",
        ]
    return out


def per_row(stored, column, table):
    by_index = {int(i): v for i, v in zip(stored["index"], stored[column])}
    return [bool(by_index[int(i)]) for i in table["index"]]


def _mathvision_theirs(score, eval_file, table):
    from vlmeval.dataset.utils.mathv import post_check

    stored = pd.read_excel(eval_file.replace(".xlsx", f"_{JUDGE}.xlsx"))
    rows = [bool(post_check(stored.iloc[r], prefetch=False)) for r in range(len(stored))]
    return rows, score.set_index("Subject").loc["Overall", "acc"] / 100


def _mathverse_theirs(score, eval_file, table):
    stored = pd.read_excel(eval_file.replace(".xlsx", f"_{JUDGE}_score.xlsx"))
    return per_row(stored, "score", table), score.set_index("split").loc["Vision Only", "Overall"] / 100


def _logicvista_theirs(score, eval_file, table):
    stored = pd.read_excel(eval_file.replace(".xlsx", "_gpt4o-mini.xlsx"))
    return per_row(stored, "hit", table), score.set_index("Task&Skill").loc["Overall", "acc"] / 100


def _mmmu_theirs(score, eval_file, table):
    stored = pd.read_excel(eval_file.replace(".xlsx", f"_{JUDGE}_result.xlsx"))
    return per_row(stored, "hit", table), score.set_index("split").loc["validation", "Overall"]


def _wemath_theirs(score, eval_file, table):
    strict = float(str(score["Score (Strict)"].iloc[0]).rstrip("%")) / 100
    judged = eval_file.replace(".xlsx", "_gpt4o-mini.xlsx")
    return (per_row(pd.read_excel(judged), "hit", table) if os.path.exists(judged) else None), strict


def _circular_theirs(score, eval_file, table):
    stored = pd.read_excel(eval_file.replace(".xlsx", f"_{JUDGE}_result.xlsx"))
    return None, float(stored["hit"].mean())


CASES = {  # name -> (VLMEvalKit class, rows builder, candidates builder, judge, VLMEvalKit's numbers)
    "MathVision_MINI": (
        "MathVision",
        "mathvision_rows",
        lambda rows: free_candidates(rows, {3: "0.5", 2: "It is a square."}),
        JUDGE,
        _mathvision_theirs,
    ),
    "MathVerse_MINI_Vision_Only": (
        "MathVerse",
        "mathverse_rows",
        lambda rows: free_candidates(rows, {}),
        JUDGE,
        _mathverse_theirs,
    ),
    "LogicVista": (
        "LogicVista",
        "logicvista_rows",
        lambda rows: free_candidates(rows, {3: "The answer is BD", 1: "The answer is A, C"}),
        JUDGE,
        _logicvista_theirs,
    ),
    "MMMU_DEV_VAL": ("MMMUDataset", "mmmu_rows", option_candidates, JUDGE, _mmmu_theirs),
    "WeMath": ("WeMath", "wemath_rows", wemath_candidates, JUDGE, _wemath_theirs),
    "WeMath_exact": ("WeMath", "wemath_rows", wemath_candidates, "exact_matching", _wemath_theirs),
    "MMBench_DEV_EN": ("ImageMCQDataset", "circular_rows", option_candidates, JUDGE, _circular_theirs),
}


def _append(frame, row, ignore_index=False):
    return pd.concat([frame, pd.DataFrame([row])], ignore_index=ignore_index)


@pytest.mark.parametrize("case", list(CASES))
def test_verdicts_and_headline_metric_are_vlmevalkits(case, lmudata, judge_kwargs, tmp_path, monkeypatch):
    import vlmeval.dataset as ds

    import standins.offline_benchmarks as offline

    if not hasattr(pd.DataFrame, "_append"):
        # VLMEvalKit's WeMath scoring (evaluate_update_main_results_df) calls DataFrame._append, which
        # pandas 3 removed; restore it for VLMEvalKit's side of the comparison (the report never calls it)
        monkeypatch.setattr(pd.DataFrame, "_append", _append, raising=False)

    cls_name, builder, make_candidates, judge, theirs_of = CASES[case]
    name = case.removesuffix("_exact")
    rows = getattr(offline, builder)()
    write_tsv(lmudata, name, rows)
    dataset = offline_class(getattr(ds, cls_name), name)(name)
    table = prediction_table(dataset)
    scripts = make_candidates(rows)
    texts = [[scripts[int(i)][c] for i in table["index"]] for c in range(4)]
    kwargs = {**judge_kwargs, "model": judge}
    bench = find_benchmark(dataset)
    ours = judge_benchmark(bench, dataset, table, texts, JudgeCache(str(tmp_path / "j.jsonl")), kwargs)
    headline = bench.metrics(table)[0]
    values = set()
    for i, cand in enumerate(texts):
        score, eval_file = vlmevalkit_alone(dataset, table, cand, tmp_path / f"alone_{i}", kwargs)
        their_rows, their_value = theirs_of(score, eval_file, table)
        if their_rows is not None:
            assert ours[i] == their_rows, f"{case} candidate {i}"
        ours_value = estimate(headline, np.array(ours[i], dtype=float)).value
        assert ours_value == pytest.approx(their_value, abs=5e-5 if name == "WeMath" else 1e-9), f"{case} {i}"
        values.add(round(ours_value, 6))
        assert None not in ours[i]
    assert len(values) > 1  # the candidates really differ in score
