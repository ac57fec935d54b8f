"""Render the shipped mini dataset (vlmeval_prm/data/VLMEvalPRM_MiniMCQ.tsv): 36 image MCQs about
counting, colour and position of drawn shapes. Deterministic; rerun only to change the data."""

import base64
import io
import random
import sys
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")


def draw(shape, color, box, d):
    x0, y0, x1, y1 = box
    if shape == "circle":
        d.ellipse(box, fill=color)
    elif shape == "square":
        d.rectangle(box, fill=color)
    else:
        d.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)


def b64(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def items(rng):
    rows = []
    for _ in range(12):  # counting
        n = rng.randint(1, 4)
        shape, cname = rng.choice(SHAPES), rng.choice(list(COLORS))
        img = Image.new("RGB", (112, 112), "white")
        d = ImageDraw.Draw(img)
        for j in range(n):
            x, y = 8 + (j % 2) * 52, 8 + (j // 2) * 52
            draw(shape, COLORS[cname], (x, y, x + 40, y + 40), d)
        rows.append((img, f"How many {shape}s are in the image?", ["1", "2", "3", "4"], str(n), "count"))
    for _ in range(12):  # colour
        cname, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        img = Image.new("RGB", (112, 112), "white")
        draw(shape, COLORS[cname], (26, 26, 86, 86), ImageDraw.Draw(img))
        rows.append((img, f"What colour is the {shape}?", list(COLORS), cname, "colour"))
    for _ in range(12):  # position
        left, right = rng.sample(SHAPES, 2)
        img = Image.new("RGB", (112, 112), "white")
        d = ImageDraw.Draw(img)
        draw(left, COLORS["blue"], (6, 36, 46, 76), d)
        draw(right, COLORS["red"], (66, 36, 106, 76), d)
        rows.append((img, "Which shape is on the left?", list(SHAPES) + ["none"], left, "position"))
    return rows


def main(out):
    rng = random.Random(2503)
    records = []
    for i, (img, question, options, answer, category) in enumerate(items(rng)):
        rec = {"index": i, "image": b64(img), "question": question, "category": category}
        for letter, opt in zip("ABCD", options):
            rec[letter] = opt
        rec["answer"] = "ABCD"[options.index(answer)]
        records.append(rec)
    pd.DataFrame(records).to_csv(out, sep="\t", index=False)
    print(f"wrote {len(records)} items to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "vlmeval_prm/data/VLMEvalPRM_MiniMCQ.tsv")
