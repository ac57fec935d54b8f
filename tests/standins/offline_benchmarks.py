"""Offline stand-ins for the paper's benchmarks and for the LLM judge that grades them.

There is no network here, so the real TSVs (MathVista_MINI, DynaMath, ...) cannot be downloaded.
These builders write small TSVs in each dataset's VLMEvalKit format (the columns its ``evaluate()``
and per-row helpers read) into a temporary ``$LMUData``; ``offline_class`` gives the VLMEvalKit
class a subclass that reads that file instead of downloading (no URL, no checksum), and
``pin_offline_checksums`` points the real class's checksum at the local file for a
``python -m vlmeval.run`` subprocess.

``judge_reply`` stands in for the judge model (GPT-4o-mini, or a local LMDeploy server) behind
``standins.openai_standin.serve_scripted``: it answers VLMEvalKit's own judge prompts by reading the
final "answer is ..." of the response it is shown; a response containing ``JUDGE_FAILS`` gets an
HTTP 500, as a failing judge API would. ``serve_policy`` stands in for a GPU-served policy that
answers each question with scripted step-by-step candidates.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
from collections.abc import Iterator

import pandas as pd
from PIL import Image

from standins.openai_standin import ChatStandin, last_text

JUDGE_FAILS = "[the judge cannot read this]"


def tiny_png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(root, name: str, rows: list[dict]) -> str:
    """``<root>/<name>.tsv``; the first row carries the image, the others point at it (VLMEvalKit's
    short image field: another row's index)."""
    frame = pd.DataFrame(rows)
    frame["image"] = [tiny_png_b64()] + [str(frame["index"].iloc[0])] * (len(frame) - 1)
    path = os.path.join(str(root), f"{name}.tsv")
    frame.to_csv(path, sep="\t", index=False)
    return path


def offline_class(cls: type, name: str) -> type:
    """``cls`` reading ``$LMUData/<name>.tsv`` as it is: no download URL and no checksum."""
    return type(f"Offline{cls.__name__}", (cls,), {"DATASET_URL": {name: ""}, "DATASET_MD5": {}})


def pin_offline_checksums(names: list[str]) -> None:
    """In this process, make VLMEvalKit accept the stand-in TSVs in ``$LMUData`` under the real names
    (its checksum check would otherwise re-download them)."""
    import vlmeval.dataset as ds
    from vlmeval.smp import LMUDataRoot, md5

    for name in names:
        cls = next(c for c in ds.DATASET_CLASSES if name in c.supported_datasets())
        cls.DATASET_MD5 = {**cls.DATASET_MD5, name: md5(os.path.join(LMUDataRoot(), f"{name}.tsv"))}


# -- the datasets ------------------------------------------------------------------------------------
def mathvista_rows() -> list[dict]:
    """MathVista_MINI's columns as VLMEvalKit's MathVista helpers read them (question_type,
    answer_type, precision, choices, answer_option, task, skills)."""

    def row(i, question, answer, qtype="free_form", atype="integer", precision=None, choices=None, option=None):
        return {
            "index": i,
            "question": f"[Q{i}] {question}",
            "answer": answer,
            "question_type": qtype,
            "answer_type": atype,
            "precision": precision,
            "choices": repr(choices) if choices else None,
            "answer_option": option,
            "task": "math word problem" if i % 2 else "figure question answering",
            "skills": repr(["arithmetic reasoning"] if i % 2 else ["algebraic reasoning", "statistical reasoning"]),
            "unit": None,
        }

    return [
        row(1, "How many red circles are there?", "14"),
        row(2, "What is the length of the side AB? (Unit: cm)", "2.5", atype="float", precision=1.0),
        row(
            3,
            "What fraction of the shape is blue?",
            "8/11",
            qtype="multi_choice",
            atype="text",
            choices=["3/11", "8/11", "6/11", "3/5"],
            option="B",
        ),
        row(4, "What is the value of y at x = 2?", "0.75", atype="float", precision=2.0),
        row(5, "How many sides does the polygon have?", "6"),
        row(
            6,
            "Which angle is the largest?",
            "C",
            qtype="multi_choice",
            atype="text",
            choices=["A", "B", "C", "D"],
            option="C",
        ),
    ]


def dynamath_rows() -> list[dict]:
    """DynaMath's columns: 3 seed questions x 3 variants. ``Dynamath.evaluate`` keys its worst case by
    the index of each seed's ``varid == 1`` row, so those rows have index == qid."""
    rows, index = [], {1: 1, 2: 2, 3: 3}
    kinds = {
        1: ("float", ["1.5", "2.0", "3.25"]),
        2: ("multiple choice", ["A", "C", "B"]),
        3: ("free form", ["y = 2x", "y = 3x", "y = x"]),
    }
    nxt = 4
    for qid, (kind, answers) in kinds.items():
        for varid, answer in enumerate(answers, start=1):
            i = index[qid] if varid == 1 else nxt
            nxt += varid != 1
            rows.append(
                {
                    "index": i,
                    "question": f"[D{i}] Seed {qid}, variant {varid}: what is shown?",
                    "answer": answer,
                    "answer_type": kind,
                    "qid": qid,
                    "varid": varid,
                    "subject": "algebra" if qid != 2 else "geometry",
                    "knowledge_level": "high school",
                }
            )
    return sorted(rows, key=lambda r: r["index"])


def mathvision_rows() -> list[dict]:
    """MathVision's columns: ``choices`` (a list literal, "[]" for free-form), ``answer``, ``category``."""

    def row(i, question, answer, choices, category):
        return {
            "index": i,
            "question": f"[V{i}] {question}",
            "answer": answer,
            "choices": repr(choices),
            "category": category,
            "level": 2,
        }

    return [
        row(1, "Find x.", "12", [], "algebra"),
        row(2, "Which shape has four sides?", "B", ["circle", "square", "triangle"], "geometry"),
        row(3, "What fraction is shaded?", "1/2", [], "arithmetic"),
        row(4, "Find y.", "7", [], "algebra"),
    ]


def mathverse_rows() -> list[dict]:
    """MathVerse_MINI_Vision_Only's columns: ``question_for_eval``, ``question_type``, ``problem_version``
    and the ``metadata`` dict literal that ``MathVerse_acc`` splits into subject and subfield."""

    def row(i, answer, qtype, subject):
        meta = {"split": "testmini", "source": "GeoQA", "subject": subject, "subfield": "Length"}
        question = f"[M{i}] According to the figure, find the value." + (
            "\nChoices:\nA:2\nB:4\nC:6\nD:8" if qtype == "multi-choice" else ""
        )
        return {
            "index": i,
            "question": question,
            "question_for_eval": question,
            "answer": answer,
            "question_type": qtype,
            "problem_version": "Vision Only",
            "metadata": repr(meta),
            "query_cot": question,
        }

    return [
        row(1, "C", "multi-choice", "Plane Geometry"),
        row(2, "5", "free-form", "Functions"),
        row(3, "A", "multi-choice", "Plane Geometry"),
        row(4, "2.5", "free-form", "Solid Geometry"),
    ]


def logicvista_rows() -> list[dict]:
    """LogicVista's columns: letter answers (several: "A, C") and the ``skill`` list it groups by."""
    skills = ["inductive", "deductive", "numerical", "spatial", "mechanical"]
    answers = ["A", "C", "B, D", "E", "B"]
    return [
        {
            "index": i + 1,
            "question": f"[L{i + 1}] Which option comes next? Select from A-E.",
            "answer": a,
            "skill": f"{s}, {skills[(i + 1) % 5]}",
            "capability": "patterns",
        }
        for i, (s, a) in enumerate(zip(skills, answers))
    ]


def mmmu_rows() -> list[dict]:
    """MMMU_DEV_VAL's columns: options A-D (none for an open question), ``split``, ``category``."""

    def row(i, answer, split, options=("12 cm", "15 cm", "18 cm", "20 cm")):
        opts = dict(zip("ABCD", options)) if options else {c: None for c in "ABCD"}
        return {
            "index": i,
            "question": f"[U{i}] What is the length of the segment?",
            **opts,
            "answer": answer,
            "split": split,
            "category": "Math",
            "l2-category": "Geometry",
        }

    return [
        row(1, "B", "validation"),
        row(2, "D", "validation"),
        row(3, "A", "dev"),
        row(4, "16", "validation", options=None),
        row(5, "C", "validation"),
    ]


def wemath_rows() -> list[dict]:
    """WeMath's columns: problems of 2 and 3 steps, each a row per sub-problem and one for the whole
    (``key``: "2steps_1", ..., "2steps_multi"), linked by ``ID``; options A-E; ``knowledge concept``."""
    rows, i = [], 0
    for pid, steps_n in ((1, 2), (2, 3), (3, 2)):
        for part in [*map(str, range(1, steps_n + 1)), "multi"]:
            i += 1
            rows.append(
                {
                    "index": i,
                    "ID": pid,
                    "key": f"{steps_n}steps_{part}",
                    "question": f"[W{i}] Problem {pid}, part {part}: choose the right value.",
                    "A": "2",
                    "B": "4",
                    "C": "6",
                    "D": "8",
                    "E": "No correct answer",
                    "answer": "ABCD"[i % 4],
                    "knowledge concept": "Area of Circles" if pid != 2 else "Perimeter of Squares",
                }
            )
    return rows


def circular_rows() -> list[dict]:
    """MMBench-style circular rows: each question with its options rotated (index + 1e6 per turn),
    the answer letter moving with its option."""
    rows = []
    for g, (options, right) in enumerate(
        [(["cat", "dog", "bird"], 1), (["red", "green", "blue"], 0), (["one", "two", "three"], 2)], start=1
    ):
        for turn in range(3):
            rotated = options[turn:] + options[:turn]
            rows.append(
                {
                    "index": g + turn * 1_000_000,
                    "question": f"[C{g}] Which one is shown?",
                    **dict(zip("ABC", rotated)),
                    "answer": "ABC"[rotated.index(options[right])],
                    "category": "coarse_perception",
                    "l2-category": "Perception",
                    "split": "dev",
                }
            )
    return rows


# -- the judge -----------------------------------------------------------------------------------------
def _final_answer(response: str) -> str | None:
    hits = re.findall(r"answer is:?\s*([^\n]*)", response, flags=re.IGNORECASE)
    if not hits:
        return None
    return hits[-1].strip().strip("$*").rstrip(".").strip().strip("()") or None


def _after_last(prompt: str, start: str, end: str) -> str:
    body = prompt[prompt.rfind(start) + len(start) :]
    cut = body.rfind(end)
    return body[:cut] if cut >= 0 else body


def judge_reply(prompt: str, payload: dict) -> str | None:
    """VLMEvalKit's judge prompts, answered from the graded response's final "answer is ..."."""
    if prompt.strip() == "hello":  # BaseAPI.working()
        return "Hello! How can I help?"
    if prompt.rstrip().endswith("Judgement:"):  # MathVerse scoring: standard answer vs extraction
        standard = _after_last(prompt, "[Standard Answer]:", "[Model_answer]").strip()
        extracted = _after_last(prompt, "[Model_answer] :", "Judgement:").strip()
        return "1" if standard.lower() == extracted.lower() else "0"
    if "Free-form answer:" in prompt:  # DynaMath
        response = _after_last(prompt, "Free-form answer:", "\nInstruction:")
    elif prompt.rstrip().endswith("Your output:"):  # option matching (MCQ, WeMath, LogicVista)
        response = _after_last(prompt, "Answer: ", "Your output:").replace("<start>", "").replace("<end>", "")
    elif "Model respone:" in prompt:  # MathVista / MathVision extraction
        response = _after_last(prompt, "Model respone:", "Extracted answer:")
    elif "Model response: '" in prompt:  # MathVerse extraction
        response = _after_last(prompt, "Model response: '", "'\nExtracted Answer:")
    else:
        raise AssertionError(f"unexpected judge prompt: {prompt[-300:]!r}")
    if JUDGE_FAILS in response:
        return None
    answer = _final_answer(response)
    if prompt.rstrip().endswith("Your output:"):
        return answer if answer and re.fullmatch(r"[A-Z]+", answer) else "Z"
    return answer or "none"


# -- the policy ----------------------------------------------------------------------------------------
class ScriptedPolicy(ChatStandin):
    """A served policy answering each question (found by its "[Q<index>]" / "[D<index>]" tag) with its
    scripted candidates, in order: all of them to a request for that many (``n``), candidate 0 to a
    single (greedy) request and the rest to a request for one fewer."""

    def __init__(self, scripts: dict[str, list[str]], model: str = "standin-policy"):
        super().__init__(model)
        self.scripts = scripts

    def answer(self, payload: dict, auth: str | None) -> tuple[int, dict]:
        request = self.record(payload, auth)
        prompt = last_text(payload)
        tag = re.search(r"\[([QD]\d+)\]", prompt)
        if tag is None:
            return 400, {"error": {"message": f"no question tag in {prompt[:200]!r}"}}
        texts = self.scripts[tag.group(1)]
        n = int(payload.get("n") or 1)
        return 200, self.body(request, payload, texts if n == len(texts) else texts[:1] if n == 1 else texts[1 : 1 + n])


@contextlib.contextmanager
def serve_policy(scripts: dict[str, list[str]], model: str = "standin-policy") -> Iterator[ScriptedPolicy]:
    server = ScriptedPolicy(scripts, model).start()
    try:
        yield server
    finally:
        server.stop()


#: Four candidates per MathVista stand-in question: answers the rules settle (the bare answer, an
#: option), answers only the judge can read, wrong ones, and repeats (judged once).
MATHVISTA_CANDIDATES = {
    1: [
        "14",
        "Count the circles in each row.\n\nThe answer is 14.",
        "The answer is 15.",
        "Count the circles in each row.\n\nThe answer is 14.",
    ],
    2: ["Measure AB with the scale.\n\nThe answer is 2.5", "So the answer is 2.50.", "The answer is 3.1", "2.5"],
    3: ["The answer is (B) 8/11", "The answer is (A).", "I think 8/11", "The answer is C"],
    4: ["The answer is 0.75", "The answer is 0.7", "The answer is 3/4", "The answer is 0.75"],
    5: ["6", "The answer is 5", "The answer is 6.", "A hexagon.\n\nThe answer is 6"],
    6: ["The answer is C", "C", "The largest angle is B.", "The answer is D"],
}


def _rotated(texts: list[str], by: int) -> list[str]:
    """Each question's candidates in a different order, so the first one is not always right."""
    return texts[by % len(texts) :] + texts[: by % len(texts)]


def mathvista_scripts() -> dict[str, list[str]]:
    return {f"Q{i}": _rotated(texts, i) for i, texts in MATHVISTA_CANDIDATES.items()}


def dynamath_scripts(rows: list[dict]) -> dict[str, list[str]]:
    """4 candidates per row: JSON (the rules read it), free text (the judge reads it where the type
    needs one), a wrong answer, and the right JSON answer except on one row."""
    out = {}
    for row in rows:
        i, answer = int(row["index"]), str(row["answer"])
        wrong = {"float": "9.75", "multiple choice": "D", "free form": "y = 7x"}[row["answer_type"]]
        out[f"D{i}"] = _rotated(
            [
                json_answer(answer),
                steps("Work it out.", f"The answer is {answer}"),
                json_answer(wrong) if i % 2 else steps("Hmm.", f"The answer is {wrong}"),
                json_answer(answer) if i != 5 else json_answer(wrong),
            ],
            i // 2,
        )
    return out


def steps(*lines: str) -> str:
    """A step-by-step response: steps separated by blank lines, as the PRM splits them."""
    return "\n\n".join(lines)


def json_answer(short: str, reasoning: str = "Compute it step by step.") -> str:
    return steps(f"Step 1: {reasoning}", json.dumps({"solution": reasoning, "short answer": short}))
