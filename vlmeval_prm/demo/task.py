"""The synthetic visual task: count shapes in a 2 x 2 grid, step by step.

Every problem is a pure function of (split, index): a seeded ``random.Random`` draws the question
and a scene whose answer it fixes, so the train and held-out splits never share a stream and every
machine renders the same images. The question asks how many shapes of a colour, of a kind, or of
both there are; the options are always ``A. 0`` .. ``E. 4``. A worked solution has four steps,
separated by blank lines as VisualPRM splits them: read the top row, read the bottom row, count per
row and add up, name the option; a guess is the last step alone. Answers are checked exactly (the
letter after "The answer is").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from vlmeval_prm.constants import STEP_SEPARATOR

COLOURS = {"red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 80, 220)}
SHAPES = ("circle", "square")
ROWS = ("Top", "Bottom")
#: Option letter k is the count k.
OPTIONS = "ABCDE"
#: Rendered size. VLMEvalKit upsizes any image under 100 px when it encodes one (``encode_image_to_base64``);
#: at 112 px the TSV holds exactly these pixels. The tiny models' processor resizes to its own 56 px tile.
IMAGE_PX = 112
SPLITS = ("train", "test")
#: Draw weights of the answer 0..4: every option occurs, the middle ones most.
ANSWER_WEIGHTS = (2, 3, 3, 2, 1)

_ANSWER = re.compile(r"The answer is ([A-E])\b")


@dataclass(frozen=True)
class Item:
    colour: str
    shape: str

    def describe(self) -> str:
        return f"{self.colour} {self.shape}"


ALL_ITEMS = tuple(Item(c, s) for c in COLOURS for s in SHAPES)
#: Cells in reading order: top left, top right, bottom left, bottom right; None is an empty cell.
Scene = tuple


@dataclass(frozen=True)
class Question:
    colour: str | None
    shape: str | None

    def text(self) -> str:
        noun = f"{self.shape}s" if self.shape else "shapes"
        return f"How many {self.colour + ' ' if self.colour else ''}{noun} are there?"

    def label(self) -> str:
        """How the counting step names what it counts ("Red shapes", "Circles", "Blue squares")."""
        noun = f"{self.shape}s" if self.shape else "shapes"
        return f"{self.colour} {noun}".capitalize() if self.colour else noun.capitalize()

    def matches(self, item: Item | None) -> bool:
        return item is not None and self.colour in (None, item.colour) and self.shape in (None, item.shape)


@dataclass(frozen=True)
class Problem:
    split: str
    index: int
    scene: Scene
    question: Question

    @property
    def count(self) -> int:
        return sum(self.question.matches(c) for c in self.scene)

    @property
    def answer(self) -> str:
        return OPTIONS[self.count]


def make_problem(split: str, index: int) -> Problem:
    """The problem ``index`` of ``split`` (deterministic)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = random.Random(f"vlmeval-prm-shapes:{split}:{index}")
    kind = rng.choice(("colour", "shape", "both"))
    question = Question(
        colour=rng.choice(list(COLOURS)) if kind != "shape" else None,
        shape=rng.choice(SHAPES) if kind != "colour" else None,
    )
    count = rng.choices(range(len(OPTIONS)), weights=ANSWER_WEIGHTS)[0]
    hits = set(rng.sample(range(4), count))
    others = [None, *[i for i in ALL_ITEMS if not question.matches(i)]]
    scene = tuple(
        rng.choice([i for i in ALL_ITEMS if question.matches(i)]) if k in hits else rng.choice(others) for k in range(4)
    )
    return Problem(split, index, scene, question)


def render(scene: Scene, seed: str):
    """The 2 x 2 grid as an RGB PIL image; shapes jitter a little in size and place (seeded)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (IMAGE_PX, IMAGE_PX), "white")
    draw = ImageDraw.Draw(img)
    cell = IMAGE_PX // 2
    for k, item in enumerate(scene):
        if item is None:
            continue
        x0, y0 = (k % 2) * cell, (k // 2) * cell
        size = rng.randint(30, 40)
        left = x0 + (cell - size) // 2 + rng.randint(-4, 4)
        top = y0 + (cell - size) // 2 + rng.randint(-4, 4)
        box = (left, top, left + size, top + size)
        (draw.ellipse if item.shape == "circle" else draw.rectangle)(box, fill=COLOURS[item.colour])
    return img


def problem_image(problem: Problem):
    return render(problem.scene, seed=f"render:{problem.split}:{problem.index}")


def solution(problem: Problem, stated: Scene | None = None, total: int | None = None) -> str:
    """The four-step solution. ``stated`` is the scene as the solver reads it and ``total`` the sum it
    writes (defaults: the true scene and the true sum); the later steps follow what was stated."""
    stated = problem.scene if stated is None else stated
    q = problem.question
    rows = [stated[0:2], stated[2:4]]
    per_row = [sum(q.matches(c) for c in row) for row in rows]
    total = sum(per_row) if total is None else total
    steps = [f"{name} row: {', '.join(c.describe() if c else 'empty' for c in row)}." for name, row in zip(ROWS, rows)]
    steps.append(f"{q.label()}: {per_row[0]} + {per_row[1]} = {total}.")
    steps.append(f"The answer is {OPTIONS[total]}.")
    return STEP_SEPARATOR.join(steps)


def guess(rng: random.Random) -> str:
    """An answer with no working: a uniformly random option, one step."""
    return f"The answer is {rng.choice(OPTIONS)}."


def noisy_solution(
    problem: Problem, rng: random.Random, cell_error: float, count_error: float, guess_rate: float = 0.0
) -> str:
    """A demonstration that, with probability ``guess_rate``, answers without working (``guess``);
    otherwise works it out but misreads each cell with probability ``cell_error`` and miscounts with
    probability ``count_error``, the later steps staying consistent with the mistake, as a solver's would.
    Training on these gives a policy that is right only part of the time, with a realistic error mix."""
    if rng.random() < guess_rate:
        return guess(rng)
    stated = tuple(
        rng.choice([x for x in (None, *ALL_ITEMS) if x != c]) if rng.random() < cell_error else c for c in problem.scene
    )
    total = sum(problem.question.matches(c) for c in stated)
    if rng.random() < count_error:
        total = rng.choice([t for t in (total - 1, total + 1) if 0 <= t < len(OPTIONS)])
    return solution(problem, stated, total)


def final_answer(text: str | None) -> str | None:
    """The option letter of the last "The answer is X", or None."""
    found = _ANSWER.findall(text or "")
    return found[-1] if found else None


def is_correct(problem: Problem, text: str | None) -> bool:
    return final_answer(text) == problem.answer


def options() -> dict[str, str]:
    return {letter: str(k) for k, letter in enumerate(OPTIONS)}


def mcq_prompt(problem: Problem) -> str:
    """The text VLMEvalKit's ``ImageMCQDataset.build_prompt`` makes of the problem's row (pinned by
    tests/test_demo_task.py against the real ``build_prompt``)."""
    opts = "".join(f"{k}. {v}\n" for k, v in options().items())
    return (
        f"Question: {problem.question.text()}\nOptions:\n{opts}"
        "Please select the correct answer from the options above. \n"
    )
