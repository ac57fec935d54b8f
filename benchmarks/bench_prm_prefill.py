"""PRM prefill work in-process: every candidate in full vs the shared prefix, against the limit.

N candidates of one question share a prefix of P tokens (system turn, image tokens, question) and
differ in R_i tokens each. Scoring each in full prefills N·P + ΣR_i tokens; the least any exact
scorer can prefill is P + ΣR_i. This runs a fixed workload (seeded questions, images and candidates
of different lengths, on the tiny PRM) through ``TransformersPRM`` with ``share_prefix`` off and
on, counts the tokens each prefilled (``counters``), computes the limit from the token ids, checks
that both give the same scores, and prints as its last line ``prm prefill / limit: <ratio>``.

    python benchmarks/bench_prm_prefill.py [--questions 6] [--n 8]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from PIL import Image

from vlmeval_prm.counters import COUNTS
from vlmeval_prm.prm.hf_backend import TransformersPRM, common_prefix_length

WORDS = (
    "the side is so area angle triangle circle radius length value total sum of equals therefore "
    "option because each line point graph first next then finally"
).split()


def workload(n_questions: int, n: int, folder: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(question, image paths, candidates): 1 or 2 images, candidates of 1 to 10 steps of 4 to 30 words; in
    every third question all candidates share their first step, in another two candidates are the same."""
    rng = random.Random(0)
    out = []
    for q in range(n_questions):
        images = []
        for k in range(1 + q % 2):
            path = os.path.join(folder, f"q{q}-{k}.png")
            Image.new(
                "RGB", (rng.randint(60, 200), rng.randint(60, 200)), tuple(rng.randrange(256) for _ in range(3))
            ).save(path)
            images.append(path)
        question = f"Question {q}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + "?"
        candidates = [
            [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) + "." for _ in range(rng.randint(1, 9))]
            for _ in range(n)
        ]
        if q % 3 == 0:  # as sampled candidates often do: all open with the same step
            candidates = [["First, read the figure carefully."] + c for c in candidates]
        elif q % 3 == 1:  # and some are drawn twice
            candidates[1] = list(candidates[0])
        out.append((question, images, candidates))
    return out


def limit_tokens(prm: TransformersPRM, question: str, images: list[str], candidates: list[list[str]]) -> int:
    """P + ΣR_i: the shared token prefix once, plus every candidate's own tokens."""
    texts = [prm.render(question, steps, len(images)) for steps in candidates]
    rows = prm.inputs.split(texts, prm.inputs.images(images))[0]
    shared = common_prefix_length(rows)
    return shared + sum(len(r) - shared for r in rows)


def run(prm: TransformersPRM, work) -> tuple[list, dict, float]:
    COUNTS.clear()
    start = time.perf_counter()
    scores = [prm.score(question, images, candidates) for question, images, candidates in work]
    return scores, dict(COUNTS), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--n", type=int, default=8, help="candidates per question")
    args = parser.parse_args()

    full = TransformersPRM("tiny:prm", batch_size=args.n, share_prefix=False)
    shared = TransformersPRM("tiny:prm", batch_size=args.n)
    with tempfile.TemporaryDirectory() as tmp:
        work = workload(args.questions, args.n, tmp)
        run(shared, work[:1])  # warm-up
        full_scores, full_counts, full_wall = run(full, work)
        shared_scores, shared_counts, shared_wall = run(shared, work)
        limit = sum(limit_tokens(shared, *item) for item in work)

    full_tokens, shared_tokens = full_counts["prm_prefill_tokens"], shared_counts["prm_prefill_tokens"]
    diffs = [
        abs(a - b)
        for per_q_a, per_q_b in zip(shared_scores, full_scores)
        for ra, rb in zip(per_q_a, per_q_b)
        for a, b in zip(ra.scores, rb.scores)
    ]
    failures = sum(not r.ok for per_q in shared_scores + full_scores for r in per_q)
    steps = sum(len(c) for _, _, cands in work for c in cands)
    print(
        f"workload: {args.questions} questions x {args.n} candidates, 1-2 images, {steps} steps "
        f"(tiny PRM, CPU); {failures} failed candidates"
    )
    print(
        f"prefill tokens, every candidate in full (N*P + sum R_i): {full_tokens:,} "
        f"in {full_counts['prm_forward_passes']} forward passes, {full_wall:.2f}s"
    )
    print(
        f"prefill tokens, shared prefix: {shared_tokens:,} "
        f"in {shared_counts['prm_forward_passes']} forward passes, {shared_wall:.2f}s"
    )
    print(f"limit P + sum R_i: {limit:,}")
    print(f"full / shared prefill tokens: {full_tokens / shared_tokens:.2f}x")
    print(f"scores, shared vs full: max |difference| {max(diffs):.1e} over {len(diffs)} steps")
    print(f"prm prefill / limit: {shared_tokens / limit:.3f}")


if __name__ == "__main__":
    main()
