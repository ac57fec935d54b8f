"""VL-RewardBench (VLMEvalKit's own ``VLRewardBench`` dataset and evaluation) with reward models as the model,
through the host's run: the tiny PRM (``PRMJudge``: prefers the response with the higher mean step score) and
a ``critic:`` judge (answers the dataset's own prompt). Offline: the benchmark's TSV is a small file in its
format written here (its download is not reachable), and the judge model its evaluation asks to read each
verdict (GPT-4o-mini in VLMEvalKit) is a local OpenAI-compatible stand-in. The metrics are recomputed here
from the rows, the shown order, the PRM's own scores and the critic's scripted answers."""

import hashlib
import json
import os
import subprocess
from collections import defaultdict

import pandas as pd
import pytest
from commands import one_output, pinned_run_command

from standins.offline_benchmarks import write_tsv
from standins.openai_standin import last_text, serve_scripted
from vlmeval_prm.host.prm_judge import shown_order

pytestmark = pytest.mark.e2e
DATA, JUDGE = "VL-RewardBench", "gpt-4o-mini"

ROWS = [
    ("general", "What colour is the square?", ["The square is red.", "Step one.\n\nThe square is blue."], [0, 1]),
    ("general", "How many dots?", ["There are 3 dots.\n\nSo 3.", "I count two dots."], [1, 0]),
    ("hallucination", "Is there a cat?", ["No cat is visible.", "Yes, a cat sits on the left.\n\nIt is grey."], [0, 1]),
    ("hallucination", "Any text?", ["The sign says STOP.", "There is no text."], [1, 0]),
    ("reasoning", "What is 2 + 3?", ["2 + 3 = 5.\n\nThe answer is 5.", "2 + 3 = 6."], [0, 1]),
    ("reasoning", "Which is larger, 7 or 4?", ["4 is larger.", "7 > 4.\n\nSo 7 is larger."], [1, 0]),
]


def rows() -> list[dict]:
    return [
        {"index": i, "question": q, "response": str(r), "answer": str(rank), "category": c}
        for i, (c, q, r, rank) in enumerate(ROWS)
    ]


def critic_choice(prompt: str) -> int:
    """The stand-in critic's answer to the dataset's prompt: a fixed function of the prompt."""
    return 1 + int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 2


def reply(prompt: str, payload: dict) -> str:
    if "Judgement:" in prompt:  # the evaluation's LLM parser reading a verdict
        verdict = prompt.split("Judgement:", 1)[1]
        return "Answer 1" if "Answer 1 is better" in verdict else "Answer 2" if "Answer 2 is better" in verdict else "?"
    if "determine which of the two provided answers is better" in prompt:  # the critic, on the dataset's prompt
        return f"Both are fine.\nOverall Judgment: Answer {critic_choice(prompt)} is better."
    return "Hello."  # the judge's working() probe


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_paths):
    work = tmp_path_factory.mktemp("vlrb")
    lmu = work / "LMUData"
    lmu.mkdir()
    write_tsv(lmu, DATA, rows())
    with serve_scripted(reply, model=JUDGE) as server:
        critic = {
            "class": "GPT4V",
            "model": "critic-model",
            "api_base": f"{server.url}/v1/chat/completions",
            "key": "sk-critic",
            "retry": 1,
            "verbose": False,
        }
        config = {
            "model": {
                "TinyPRM-judge": {"class": "PRMJudge", "prm": "transformers:tiny:prm"},
                "Critic-judge": {"class": "PRMJudge", "prm": "critic:judge", "model": critic},
            },
            "data": {DATA: {"class": "VLRewardBench", "dataset": DATA}},
        }
        (work / "config.json").write_text(json.dumps(config))
        env = {
            **os.environ,
            "LMUData": str(lmu),
            "VLMEVAL_PRM_DEMO": "1",
            "OPENAI_API_BASE": f"{server.url}/v1/chat/completions",
            "OPENAI_API_KEY": "sk-judge",
        }
        cmd = pinned_run_command([DATA], "--config", str(work / "config.json"), "--work-dir", str(work / "outputs"))
        proc = subprocess.run(cmd + ["--judge", JUDGE], cwd=work, env=env, capture_output=True, text=True, timeout=1200)
        prompts = [last_text(p) for p in server.payloads]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, prompts


def metrics(work, model: str) -> pd.Series:
    path = one_output(work / "outputs" / model, f"{model}_{DATA}_{JUDGE}_score.csv")
    return pd.read_csv(path).iloc[0]


def expected(correct: list[float]) -> dict:
    """VLRewardBench.evaluate's metric: accuracy per category, their mean, and the overall mean."""
    by = defaultdict(list)
    for (category, *_), hit in zip(ROWS, correct):
        by[category].append(hit)
    per = {c: sum(v) / len(v) for c, v in by.items()}
    return {**per, "Macro Accuracy": sum(per.values()) / len(per), "Overall Consistency": sum(correct) / len(correct)}


def truth(k: int) -> int:
    """The better response's place in the shown order (1 or 2)."""
    _, _, responses, rank = ROWS[k]
    return rank.index(0 if shown_order(responses) == responses else 1) + 1


def test_a_prm_prefers_its_higher_scored_response(evaluated):
    from vlmeval_prm.prm.formats import build_format
    from vlmeval_prm.prm.hf_backend import TransformersPRM
    from vlmeval_prm.select.aggregate import response_score

    work, _ = evaluated
    prm, fmt = TransformersPRM("tiny:prm"), build_format("visualprm")
    folder = work / "outputs" / "TinyPRM-judge"
    pred = pd.read_excel(one_output(folder, f"TinyPRM-judge_{DATA}.xlsx"))
    image = next((work / "LMUData" / "images" / DATA).glob("0*"))
    correct = []
    for k, (_, question, responses, _) in enumerate(ROWS):
        shown = shown_order(responses)
        scored = prm.score(question, [str(image)], [fmt.split(r, 12) for r in shown])
        values = [response_score(s.scores, "mean") for s in scored]
        choice = 1 if values[0] > values[1] else 2
        assert f"Answer {choice} is better" in pred.loc[pred["index"] == k, "prediction"].iloc[0]
        correct.append(float(choice == truth(k)))
    got = metrics(work, "TinyPRM-judge")
    for name, value in expected(correct).items():
        assert got[name] == pytest.approx(value), name


def test_a_critic_answers_the_datasets_own_prompt(evaluated):
    work, prompts = evaluated
    asked = [p for p in prompts if "determine which of the two provided answers is better" in p]
    assert len(asked) == len(ROWS)
    correct = []
    for k, (_, question, responses, _) in enumerate(ROWS):
        (prompt,) = [p for p in asked if f"Question: {question}" in p]
        shown = shown_order(responses)
        assert prompt.index(shown[0]) < prompt.index(shown[1])  # the order the dataset shows them in
        correct.append(float(critic_choice(prompt) == truth(k)))
    got = metrics(work, "Critic-judge")
    for name, value in expected(correct).items():
        assert got[name] == pytest.approx(value), name
