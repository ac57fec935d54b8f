"""Best-of-N work counts on CPU with the tiny models: what one sample costs.

Prints generations per sample (batched ``num_return_sequences`` vs N sequential calls), PRM forward
passes and prefill tokens per sample (shared prefix, one pass per candidate, one pass per step prefix), and the
wall-time ratio of sequential to batched sampling of N=8. Run: ``python benchmarks/bench_bon_cpu.py``.
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
import time
from importlib.resources import files

import pandas as pd

from vlmeval_prm.counters import COUNTS
from vlmeval_prm.loading import load_images
from vlmeval_prm.policy import SamplingConfig, get_adapter
from vlmeval_prm.prm import build_scorer
from vlmeval_prm.steps import split_steps


def questions(k: int, folder: str) -> list[list[dict]]:
    data = pd.read_csv(files("vlmeval_prm") / "data" / "VLMEvalPRM_MiniMCQ.tsv", sep="\t").head(k)
    out = []
    for _, row in data.iterrows():
        path = os.path.join(folder, f"{row['index']}.png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(row["image"]))
        options = "\n".join(f"{c}. {row[c]}" for c in "ABCD")
        out.append([{"type": "image", "value": path}, {"type": "text", "value": f"{row['question']}\n{options}"}])
    return out


def prefix_tokens(prm, question: str, image, steps: list[str]) -> int:
    """Prefill tokens if every step were scored by its own forward pass over its prefix."""
    total = 0
    for k in range(1, len(steps) + 1):
        msgs = prm.fmt.messages(question, steps[:k], 1)[:-1]
        text = prm.inputs.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        total += prm.inputs.processor(text=[text], images=[[image]], return_tensors="pt")["input_ids"].shape[1]
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args()
    from vlmeval_prm.policy.transformers_chat import TransformersChat

    policy = TransformersChat("tiny:policy", max_new_tokens=48)
    adapter, cfg = get_adapter(policy), SamplingConfig()
    prm = build_scorer("transformers:tiny:prm", batch_size=args.n)
    full = build_scorer("transformers:tiny:prm", batch_size=args.n, share_prefix=False)
    with tempfile.TemporaryDirectory() as tmp:
        msgs = questions(args.samples, tmp)
        settings = adapter.settings(cfg, greedy=False)
        kwargs = {k: v for k, v in settings.items() if v is not None}
        policy._generate(msgs[0], 1, **kwargs)  # warm-up

        COUNTS.clear()
        t0 = time.perf_counter()
        batched = [adapter.sample(policy, m, None, args.n, cfg) for m in msgs]
        t_batched = time.perf_counter() - t0
        calls_batched = COUNTS["policy_generate_calls"]

        COUNTS.clear()
        t0 = time.perf_counter()
        for m in msgs:
            for _ in range(args.n):
                policy._generate(m, 1, **kwargs)
        t_seq = time.perf_counter() - t0
        calls_seq = COUNTS["policy_generate_calls"]

        scored = [
            (m[1]["value"], m[0]["value"], [split_steps(s.text) or ["(empty)"] for s in samples])
            for m, samples in zip(msgs, batched)
        ]
        COUNTS.clear()
        for question, image, cands in scored:
            full.score(question, [image], cands)
        one_pass_tokens = COUNTS["prm_prefill_tokens"]
        COUNTS.clear()
        prefix_pass_tokens, steps_total = 0, 0
        for question, image, cands in scored:
            prm.score(question, [image], cands)
            pil = load_images([image])[0]
            for steps in cands:
                prefix_pass_tokens += prefix_tokens(prm, question, pil, steps)
                steps_total += len(steps)
        shared_tokens = COUNTS["prm_prefill_tokens"]
        sequences = COUNTS["prm_sequences"]
        s = args.samples
        print(f"tiny models on CPU, {s} samples, N={args.n}, {steps_total / (s * args.n):.1f} steps per candidate")
        print(f"policy generate calls per sample: batched {calls_batched / s:.0f}, sequential {calls_seq / s:.0f}")
        print(
            f"sampling wall time per sample: batched {t_batched / s:.2f}s, sequential {t_seq / s:.2f}s, "
            f"sequential/batched = {t_seq / t_batched:.2f}x"
        )
        print(
            f"PRM forward passes per sample: {COUNTS['prm_forward_passes'] / s:.0f} (the shared prefix, then "
            f"{sequences / s:.0f} candidates in one batch); one pass per step prefix would be {steps_total / s:.0f}"
        )
        print(
            f"PRM prefill tokens per sample: shared prefix {shared_tokens / s:.0f}, one pass per candidate "
            f"{one_pass_tokens / s:.0f} ({one_pass_tokens / shared_tokens:.2f}x), per step prefix "
            f"{prefix_pass_tokens / s:.0f} ({prefix_pass_tokens / shared_tokens:.2f}x)"
        )


if __name__ == "__main__":
    main()
