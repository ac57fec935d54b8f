"""VLRMBench (VLMEvalKit's own ``VLRMBench`` dataset and evaluation) with the tiny PRM as the model, through the
host's run. Offline: the benchmark's TSV is a small file in its format written here (its download is not
reachable): each ``question`` is a whole task prompt with the section titles of the benchmark's templates
(JCruan519/VLRMBench ``model_eval/eval_prompt_files.py``; the wording here is ours), ``answer`` the step-error
list, ``task_gt`` the foresight truth, ``order`` a multi_solution pair's halves. The metrics are recomputed here
from the steps written into the prompts, the PRM's own scores and a hand-written F1."""

import hashlib
import itertools
import os
import subprocess
from ast import literal_eval

import pandas as pd
import pytest
from commands import one_output, pinned_run_command

from standins.offline_benchmarks import write_tsv
from standins.openai_standin import serve_scripted

DATA, THRESHOLD = "VLRMBench", 0.5

STEP_ROWS = [  # category, question, steps, task_gt (1: the step has an error)
    (
        "step_correctness",
        "How many sides has a square?",
        ["A square is a polygon.", "It has 5 sides.", "So 5."],
        [0, 1, 1],
    ),
    ("step_correctness", "What is 3 x 3?", ["3 x 3 = 9.", "The answer is 9."], [0, 0]),
    ("location_error", "Where is the red dot?", ["The dot is red.", "It is at the top left.", "Top left."], [0, 1, 0]),
    ("location_error", "Which side is the tree on?", ["There is a tree.", "It is on the right.", "Right."], [0, 0, 1]),
]
FORESIGHT_ROWS = [("Is 7 prime?", ["7 has no divisors but 1 and 7."], True), ("Is 9 prime?", ["9 = 3 x 3."], False)]
PAIR = ("What is 2 + 2?", "2 + 2 = 4.\n\nThe answer is 4.", "2 + 2 = 5.")


def step_prompt(question: str, steps: list[str], title: str = "AI assistant's reasoning process") -> str:
    process = "\n".join(f"STEP{k}: {s}" for k, s in enumerate(steps, 1))
    return (
        "## Task Description\nMark the steps that contain errors.\n\n"
        f"## Question\n{question}\n\n## {title}\n{process}\n\n"
        "## Output Format\n[Indicator for STEP 1, ..., Indicator for STEP N]\n\n## Your Output: \n"
    )


def pair_prompt(question: str, first: str, second: str) -> str:
    return (
        "## Task Description\nScore both responses from 0 to 10.\n\n"
        f"## Question\n{question}\n\n"
        f"## AI Assistant's Response 1\n{first}\n\n## AI Assistant's Response 2\n{second}\n\n"
        '## Output Format\n["Score for Response 1", "Score for Response 2"]\n\n## Your Output: \n'
    )


def tables() -> dict[str, list[dict]]:
    """The three VLRMBench datasets' rows: the step tasks, foresight, multi_solution (front and back)."""
    q, good, bad = PAIR
    out = {
        DATA: [{"question": step_prompt(q, steps), "answer": str(gt), "category": c} for c, q, steps, gt in STEP_ROWS],
        f"{DATA}_Foresight": [
            {
                "question": step_prompt(q, steps, "AI Assistant's Partial Reasoning Process"),
                "category": "foresight",
                "task_gt": truth,
            }
            for q, steps, truth in FORESIGHT_ROWS
        ],
        f"{DATA}_MultiSolution": [
            {"question": pair_prompt(q, good, bad), "category": "multi_solution", "order": "front"},
            {"question": pair_prompt(q, bad, good), "category": "multi_solution", "order": "back"},
        ],
    }
    return {name: [{"index": i, **row} for i, row in enumerate(rows)] for name, rows in out.items()}


def f1(gold: list[int], pred: list[int], label: int) -> float:
    tp = sum(g == p == label for g, p in zip(gold, pred))
    fp = sum(p == label != g for g, p in zip(gold, pred))
    fn = sum(g == label != p for g, p in zip(gold, pred))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_paths):
    work = tmp_path_factory.mktemp("vlrm")
    lmu = work / "LMUData"
    lmu.mkdir()
    for name, rows in tables().items():
        write_tsv(lmu, name, rows)
    names = list(tables())
    with serve_scripted(critic_reply) as server:  # the critic: VLMEvalKit's GPT4o entry, sent to the stand-in
        env = {
            **os.environ,
            "LMUData": str(lmu),
            "VLMEVAL_PRM_DEMO": "1",
            "OPENAI_API_BASE": f"{server.url}/v1/chat/completions",
            "OPENAI_API_KEY": "sk-critic",
        }
        # --model/--data: VLRMBench's constructor takes **kwargs only, which VLMEvalKit's --config route drops
        models = ["VLMEvalPRM-TinyPRM", "GPT4o"]
        cmd = pinned_run_command(names, "--model", *models, "--data", *names, "--work-dir", str(work / "outputs"))
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = {model: {} for model in models}
    for model, name in itertools.product(got, names):
        score = one_output(work / "outputs" / model, f"{model}_{name}_score.csv")
        got[model].update(pd.read_csv(score).iloc[0].to_dict())
    return work, got


def digest_bits(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def critic_reply(prompt: str, payload: dict) -> str:
    """The stand-in critic: answers each task prompt in the benchmark's output format, from a hash of it."""
    bits = digest_bits(prompt)
    if "Partial Reasoning Process" in prompt:
        return "Yes" if bits % 2 else "No"
    if "Response 2" in prompt:
        return "[7, 3]" if bits % 2 else "[3, 7]"
    n = prompt.count("STEP") - 2  # the output format line names STEP 1 and STEP N
    return str([(bits >> k) & 1 for k in range(n)])


def check_step_metrics(got: dict, predicted: dict[str, list[int]]) -> None:
    """VLRMBench's step F1s (per category and overall) against a hand-written F1 of ``predicted``."""
    by_category: dict[str, tuple[list[int], list[int]]] = {}
    for category, question, _, gt in STEP_ROWS:
        gold, pred = by_category.setdefault(category, ([], []))
        gold += gt
        pred += predicted[question]
    overall = (
        [g for gold, _ in by_category.values() for g in gold],
        [p for _, pred in by_category.values() for p in pred],
    )
    for category, (gold, pred) in [*by_category.items(), ("Overall", overall)]:
        pos, neg = f1(gold, pred, 1), f1(gold, pred, 0)
        weighted = (gold.count(1) * neg + gold.count(0) * pos) / len(gold)
        assert got[f"{category}_F1_pos"] == pytest.approx(pos), category
        assert got[f"{category}_F1_neg"] == pytest.approx(neg), category
        assert got[f"{category}_F1_weighted"] == pytest.approx(weighted), category


@pytest.mark.e2e
def test_metrics_equal_a_recomputation_from_the_prms_scores(evaluated):
    from vlmeval_prm.prm.formats import build_format
    from vlmeval_prm.prm.hf_backend import TransformersPRM
    from vlmeval_prm.select.aggregate import response_score

    work, got = evaluated
    got = got["VLMEvalPRM-TinyPRM"]
    prm, fmt = TransformersPRM("tiny:prm"), build_format("visualprm")
    image = [str(next((work / "LMUData" / "images" / DATA).glob("0*")))]

    def scores(question, steps):
        (res,) = prm.score(question, image, [steps])
        assert res.ok, res.error
        return res.scores

    check_step_metrics(got, {q: [int(p <= THRESHOLD) for p in scores(q, steps)] for _, q, steps, _ in STEP_ROWS})
    # foresight: VLMEvalKit 0.0.20 compares task_gt with ``is True``, which the numpy booleans it reads from the
    # prediction file never are (its accuracy is 0 for any model): the answers are checked here instead
    folder = one_output(work / "outputs" / "VLMEvalPRM-TinyPRM", f"VLMEvalPRM-TinyPRM_{DATA}_Foresight.xlsx")
    answers = pd.read_excel(folder)["prediction"].tolist()
    assert answers == [
        "Yes" if response_score(scores(q, s), "mean") > THRESHOLD else "No" for q, s, _ in FORESIGHT_ROWS
    ]
    assert got["foresight_count"] == len(FORESIGHT_ROWS)
    q, good, bad = PAIR
    good_v, bad_v = (round(100 * response_score(scores(q, fmt.split(r, 12)), "mean")) for r in (good, bad))
    # front shows (good, bad), back (bad, good): right when the good one outscores the bad one both times
    assert got["multi_solution_accuracy"] == float(good_v + good_v > bad_v + bad_v)
    assert got["multi_solution_count"] == 1


@pytest.mark.e2e
def test_a_critic_answers_the_benchmarks_own_prompts(evaluated):
    _, got = evaluated
    got = got["GPT4o"]
    check_step_metrics(got, {q: literal_eval(critic_reply(step_prompt(q, s), {})) for _, q, s, _ in STEP_ROWS})
    assert got["foresight_count"] == len(FORESIGHT_ROWS)
    q, good, bad = PAIR
    front, back = (literal_eval(critic_reply(pair_prompt(q, *order), {})) for order in ((good, bad), (bad, good)))
    assert got["multi_solution_accuracy"] == float(front[0] + back[1] > front[1] + back[0])


@pytest.mark.parametrize(
    "prompt, category, message",
    [
        ("## Task\nx\n", "step_correctness", "no '## Question' section"),
        ("## Question\nQ?\n\n## AI assistant's reasoning process\nno markers\n", "detail_error", "no 'STEPk:' steps"),
        ("## Question\nQ?\n\n## AI Assistant's Response 1\na\n", "multi_solution", "lacks"),
    ],
)
def test_a_prompt_without_what_a_prm_needs_is_refused_by_name(prompt, category, message):
    """A row this reading cannot take apart is a recorded failure (PRMJudge writes VLMEvalKit's failure
    marker and this reason), never a guessed answer."""
    from vlmeval_prm.datasets.vlrmbench import vlrm_task

    with pytest.raises(ValueError, match=message):
        vlrm_task(prompt, category)
    assert vlrm_task(step_prompt("Q?", ["a", "b"]), "detail_error").steps == ["a", "b"]
