"""Batched vs sequential Best-of-N sampling through VLMEvalKit's own local wrapper classes, on CPU.

Each class runs its real ``generate`` on a tiny random-weight checkpoint of its HF-native architecture
(``tests/standins/tiny_vlms.py``; the GPU placement the wrappers hard-code is kept on the CPU by
``tests/standins/cpu_site``). For every class the same questions are sampled N times twice: with
``batch_size=1`` (one engine call per candidate, what VLMEvalKit's wrappers do alone) and batched
(one call for all N). Prints, per class: engine generate calls per question in each mode and the
wall-time ratio sequential / batched. Tiny models make prefill and per-call overhead dominate, so the
ratio is a lower bound on what sharing one call saves; ``bench_policy_gpu.py`` measures a full-size
architecture on a GPU.

    python benchmarks/bench_policy_batched.py [--n 8] [--questions 4] [--max-new-tokens 16] [--classes ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the tiny builders and the CPU shim are test code
CPU_SITE = TESTS / "standins" / "cpu_site"
sys.path[:0] = [str(TESTS), str(CPU_SITE)]
os.environ["PATH"] = os.pathsep.join([str(CPU_SITE), os.environ["PATH"]])
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sitecustomize  # noqa: E402,F401  (tests/standins/cpu_site: CUDA placement stays on the CPU)

#: class -> (tiny checkpoint, wrapper kwargs)
CLASSES = {
    "Qwen2VLChat": ("qwen2_vl", {"min_pixels": 3136, "max_pixels": 3136}),
    "Qwen3VLChat": ("qwen3_vl", {"min_pixels": 4096, "max_pixels": 4096}),
    "LLaVA_OneVision_HF": ("llava_onevision", {}),
    "PaliGemma": ("paligemma", {}),
    "Gemma3": ("gemma3", {}),
    "LFM2VL": ("lfm2_vl", {}),
}


def questions(k: int, folder: str) -> list[list[dict]]:
    from PIL import Image

    out = []
    for i in range(k):
        path = os.path.join(folder, f"q{i}.png")
        Image.new("RGB", (64 + 8 * i, 48), ("red", "green", "blue", "white")[i % 4]).save(path)
        out.append(
            [
                {"type": "image", "value": path},
                {"type": "text", "value": f"How many shapes are in figure {i}? A. 1 B. 2 C. 3 D. 4"},
            ]
        )
    return out


def run(cls_name: str, kind: str, extra: dict, args, qs: list, cache: str) -> dict:
    import vlmeval.vlm

    from standins.tiny_vlms import tiny_vlm
    from vlmeval_prm.counters import COUNTS
    from vlmeval_prm.policy import SamplingConfig, get_adapter

    model = getattr(vlmeval.vlm, cls_name)(model_path=tiny_vlm(kind, cache), **extra)
    adapter = get_adapter(model)
    row = {"class": cls_name, "route": adapter.route(model).route}
    for mode, batch_size in (("sequential", 1), ("batched", None)):
        cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, batch_size=batch_size)
        adapter.sample(model, qs[0], None, 2, cfg)  # warm-up
        calls = COUNTS[f"policy_generate_calls:{cls_name}"]
        start = time.perf_counter()
        for q in qs:
            out = adapter.sample(model, q, None, args.n, cfg)
            failed = [s.error for s in out if not s.ok]
            if failed:
                raise RuntimeError(f"{cls_name} {mode}: {failed[0]}")
        row[f"{mode}_s"] = time.perf_counter() - start
        row[f"{mode}_calls"] = (COUNTS[f"policy_generate_calls:{cls_name}"] - calls) / len(qs)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=list(CLASSES))
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "vlmeval_prm_tiny_vlms"))
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        qs = questions(args.questions, folder)
        rows = [run(c, *CLASSES[c], args, qs, args.cache) for c in args.classes]
    print(f"\nN={args.n}, {args.questions} questions, max_new_tokens={args.max_new_tokens}, CPU, tiny random weights")
    print(
        f"{'class':<20} {'route':<8} {'calls/q seq':>11} {'calls/q batched':>15} {'seq s':>7} {'batched s':>9} "
        f"{'seq/batched':>11}"
    )
    for r in rows:
        print(
            f"{r['class']:<20} {r['route']:<8} {r['sequential_calls']:>11.1f} {r['batched_calls']:>15.1f} "
            f"{r['sequential_s']:>7.2f} {r['batched_s']:>9.2f} {r['sequential_s'] / r['batched_s']:>10.1f}x"
        )


if __name__ == "__main__":
    main()
