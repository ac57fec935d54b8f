"""``vlmeval-prm report`` on MathVista and DynaMath runs made by ``python -m vlmeval.run``.

The run: ``BestOfN`` (``--config``) over VLMEvalKit's real ``GPT4V`` client, pointed at a scripted
OpenAI-compatible server standing in for a GPU-served policy (``standins.openai_standin``), with the
tiny PRM (``transformers:tiny:prm``). The data: small TSVs in MathVista_MINI's and DynaMath's
VLMEvalKit formats, offline stand-ins for the downloads (``standins.offline_benchmarks``). The judge:
a second scripted server standing in for GPT-4o-mini, reached through VLMEvalKit's own judge client
and its environment variables (``OPENAI_API_BASE``, ``OPENAI_API_KEY``); every request is counted.

Checked: each candidate's correctness in the report equals VLMEvalKit's own evaluation of that
candidate alone; Pass@1 equals VLMEvalKit's number for the first candidate; every BoN@k, including
DynaMath's worst case, equals a brute-force enumeration of k-subsets; a second report sends no judge
request.
"""

import itertools
import json
import os
import subprocess
from math import prod

import numpy as np
import pandas as pd
import pytest
from commands import pinned_run_command

from standins.offline_benchmarks import (
    dynamath_rows,
    dynamath_scripts,
    judge_reply,
    mathvista_rows,
    mathvista_scripts,
    pin_offline_checksums,
    serve_policy,
    write_tsv,
)
from standins.openai_standin import serve_scripted
from vlmeval_prm.host import cli
from vlmeval_prm.store.paths import store_file

pytestmark = pytest.mark.e2e
N, MODEL, JUDGE = 4, "StandinPolicy-BoN4", "gpt-4o-mini"
DATASETS = ("MathVista_MINI", "DynaMath")


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_paths):
    work = tmp_path_factory.mktemp("bench_report")
    lmu = work / "LMUData"
    lmu.mkdir()
    write_tsv(lmu, "MathVista_MINI", mathvista_rows())
    write_tsv(lmu, "DynaMath", dynamath_rows())
    scripts = {**mathvista_scripts(), **dynamath_scripts(dynamath_rows())}
    with serve_policy(scripts) as policy, serve_scripted(judge_reply, model=JUDGE) as judge:
        config = {
            "model": {
                MODEL: {
                    "class": "BestOfN",
                    "n": N,
                    "prm": "transformers:tiny:prm",
                    "max_steps": 4,
                    "model": {
                        "class": "GPT4V",
                        "model": "standin-policy",
                        "key": "sk-policy",
                        "api_base": f"{policy.url}/v1/chat/completions",
                        "retry": 2,
                        "max_tokens": 256,
                    },
                }
            },
            "data": {
                "MathVista_MINI": {"class": "MathVista", "dataset": "MathVista_MINI"},
                "DynaMath": {"class": "Dynamath", "dataset": "DynaMath"},
            },
        }
        (work / "bon.json").write_text(json.dumps(config))
        env = {
            **os.environ,
            "LMUData": str(lmu),
            "VLMEVAL_PRM_DEMO": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        proc = subprocess.run(
            pinned_run_command(
                DATASETS,
                "--config",
                str(work / "bon.json"),
                "--work-dir",
                str(work / "outputs"),
                "--mode",
                "infer",
            ),
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=1200,
        )
        for name in DATASETS:
            assert os.path.exists(store_file(str(work / "outputs" / MODEL), MODEL, name)), proc.stdout[-4000:]
        assert policy.chat_calls > 0
        yield work, judge


@pytest.fixture(scope="module")
def offline_env(work):
    work_dir, judge = work
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMUData", str(work_dir / "LMUData"))
        mp.setenv("OPENAI_API_BASE", f"{judge.url}/v1/chat/completions")  # VLMEvalKit's own judge settings
        mp.setenv("OPENAI_API_KEY", "sk-judge")
        import vlmeval.dataset as ds

        for cls in {c for c in ds.DATASET_CLASSES if set(DATASETS) & set(c.supported_datasets())}:
            mp.setattr(cls, "DATASET_MD5", dict(cls.DATASET_MD5))  # restored afterwards
        pin_offline_checksums(list(DATASETS))
        yield


def report_cli(work_dir):
    return cli.main(
        [
            "report",
            "--work-dir",
            str(work_dir / "outputs"),
            "--model",
            MODEL,
            "--data",
            *DATASETS,
            "--judge",
            JUDGE,
            "--judge-args",
            json.dumps({"retry": 1, "wait": 0}),
            "--nproc",
            "2",
        ]
    )


@pytest.fixture(scope="module")
def reported(work, offline_env):
    work_dir, judge = work
    before = judge.chat_calls
    assert report_cli(work_dir) == 0
    first_calls = judge.chat_calls - before
    first = (work_dir / "outputs" / MODEL / f"{MODEL}_bon_paper.csv").read_text()
    before = judge.chat_calls
    assert report_cli(work_dir) == 0
    return {"first_calls": first_calls, "second_calls": judge.chat_calls - before, "first_csv": first}


def test_second_report_makes_no_judge_call(work, reported):
    work_dir, _ = work
    assert reported["first_calls"] > 1  # the judge was needed (and asked once per distinct answer)
    assert reported["second_calls"] == 0
    again = (work_dir / "outputs" / MODEL / f"{MODEL}_bon_paper.csv").read_text()
    assert again == reported["first_csv"]
    for name in DATASETS:
        assert (work_dir / "outputs" / MODEL / f"{MODEL}_{name}_bon_judge.jsonl").exists()


def collected(work_dir, name):
    from vlmeval.smp import load

    from vlmeval_prm.report.collect import collect_run, prediction_file

    run = collect_run(str(work_dir / "outputs"), MODEL, name, {"model": JUDGE, "retry": 1, "wait": 0, "nproc": 2})
    return run, load(prediction_file(str(work_dir / "outputs"), MODEL, name))


@pytest.mark.parametrize("name", DATASETS)
def test_per_candidate_correctness_is_vlmevalkits_alone(work, reported, name, tmp_path):
    from vlmeval.dataset import build_dataset
    from vlmeval.smp import dump, get_pred_file_path

    work_dir, _ = work
    run, table = collected(work_dir, name)
    assert all(len(s.candidates) == N for s in run.samples)
    dataset = build_dataset(name)
    kinds = set()
    for i in range(N):
        texts = [s.candidates[i].text for s in run.samples]
        ours = [s.candidates[i].correct for s in run.samples]
        folder = tmp_path / f"cand_{i}"
        folder.mkdir()
        eval_file = get_pred_file_path(str(folder), "Alone", name)
        dump(table.assign(prediction=texts), eval_file)
        score = dataset.evaluate(eval_file, model=JUDGE, retry=1, wait=0, nproc=2)
        stored = pd.read_excel(eval_file.replace(".xlsx", f"_{JUDGE}.xlsx"))
        if name == "DynaMath":
            theirs = [bool(x) for x in stored["correct"]]
            pass_at_1 = score.set_index("Setting").loc["Worst Case", "Overall"]
        else:
            from vlmeval.dataset.utils.mathvista import post_check

            theirs = [bool(post_check(stored.iloc[r], prefetch=False)) for r in range(len(stored))]
            pass_at_1 = score.set_index("Task&Skill").loc["Overall", "acc"] / 100
        assert ours == theirs, f"{name} candidate {i}"
        kinds.update(theirs)
        if i == 0:  # Pass@1 in the paper table is VLMEvalKit's number for the first candidate
            paper = pd.read_csv(work_dir / "outputs" / MODEL / f"{MODEL}_bon_paper.csv")
            column = "MathVista_MINI" if name != "DynaMath" else "DynaMath [worst_case]"
            got = paper.loc[paper["strategy"] == "pass@1", column]
            assert np.allclose(got, 100 * pass_at_1)
    assert kinds == {True, False}


def brute_force_row(strategy, pool, k):
    """Expected correctness of one row: ``strategies``' own rule on every k-subset, averaged."""
    from vlmeval_prm.select.strategies import subset_outcome

    subsets = list(itertools.combinations(pool, k))
    return [subset_outcome(strategy, list(s)) for s in subsets]


def test_bon_at_k_matches_brute_force(work, reported):
    work_dir, _ = work
    paper = pd.read_csv(work_dir / "outputs" / MODEL / f"{MODEL}_bon_paper.csv").set_index(["strategy", "N"])
    strategies = [s for s in dict.fromkeys(paper.index.get_level_values(0)) if s != "pass@1"]
    assert {"prm_mean", "self_consistency", "random", "oracle"} <= set(strategies)
    run, _ = collected(work_dir, "MathVista_MINI")
    dyn, dyn_table = collected(work_dir, "DynaMath")
    qid_rows = {}
    for r, q in enumerate(dyn_table["qid"]):
        qid_rows.setdefault(q, []).append(r)
    for strategy in strategies:
        for k in (1, 2, 4):
            mean = np.mean([np.mean(brute_force_row(strategy, s.candidates, k)) for s in run.samples])
            assert paper.loc[(strategy, k), "MathVista_MINI"] == pytest.approx(100 * mean), (strategy, k)
            # worst case: every combination of one k-subset per variant, all variants right
            groups = []
            for members in qid_rows.values():
                outcomes = [brute_force_row(strategy, dyn.samples[r].candidates, k) for r in members]
                groups.append(np.mean([prod(combo) for combo in itertools.product(*outcomes)]))
            assert paper.loc[(strategy, k), "DynaMath [worst_case]"] == pytest.approx(100 * np.mean(groups)), (
                strategy,
                k,
            )
    assert (paper["Mean of 2 MC s.e."] == 0).all()  # N = 4: everything exact
    # every candidate has a vote key (DynaMath's JSON "short answer" included): one vote is one candidate
    for column in ("MathVista_MINI", "DynaMath [worst_case]"):
        assert paper.loc[("self_consistency", 1), column] == pytest.approx(paper.loc[("random", 1), column])


def test_outputs_and_layout(work, reported):
    work_dir, _ = work
    root = work_dir / "outputs" / MODEL
    paper = pd.read_csv(root / f"{MODEL}_bon_paper.csv")
    assert list(paper.columns) == [
        "N",
        "strategy",
        "MathVista_MINI",
        "DynaMath [worst_case]",
        "Mean of 2",
        "Mean of 2 MC s.e.",
    ]
    assert sorted(set(paper["N"])) == [1, 2, 4]
    assert np.allclose(paper["Mean of 2"], (paper["MathVista_MINI"] + paper["DynaMath [worst_case]"]) / 2)
    sheets = pd.read_excel(root / f"{MODEL}_bon_paper.xlsx", sheet_name=None)
    assert {"N=1", "N=2", "N=4", "scaling", "metrics"} <= set(sheets)
    metrics = sheets["metrics"]
    assert {"worst_case", "average", "accuracy"} <= set(metrics["metric"])
    assert (root / f"{MODEL}_bon_paper.png").stat().st_size > 10_000
