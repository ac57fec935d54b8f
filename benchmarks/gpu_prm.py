"""PRM scoring and policy sampling on one GPU, at VisualPRM-8B's size. Not run in CI (no GPU there).

Builds, locally (nothing is downloaded), a random-weight checkpoint with VisualPRM-8B's shape:
InternVL2.5-8B = InternViT-300M-448px + MLP projector + InternLM2.5-7B, written as transformers'
native ``InternVLForConditionalGeneration`` (the vision tower with InternViT-300M's config, the
language model as a Llama-layout decoder with InternLM2.5-7B's sizes: 32 layers, hidden 4096, MLP
14336, 32 heads, 8 KV heads, vocabulary 92553; InternLM2's fused qkv projection is the same compute).
Its tokenizer is the project's locally trained BPE (``vlmeval_prm.tiny``), so text is split into
more tokens than InternLM2's tokenizer would; images go through InternVL's dynamic tiling (448 px
tiles, at most 12 plus a thumbnail, 256 tokens each). Then, on the same GPU, one after the other:

1. LMDeploy: ``lmdeploy serve api_server <checkpoint> --backend pytorch --logprobs-mode raw_logprobs``;
   the plugin's client (``LMDeployPRM``, one /generate request per candidate) scores the workload one
   sample at a time (as one Best-of-N process does) and ``--parallel`` samples at once: candidates/s.
2. In-process: ``TransformersPRM`` in bf16 scores the same workload with the shared prefix and
   without: candidates/s and prefill tokens per sample.
3. Policy: the same checkpoint as the policy (InternVL2.5-8B is VisualPRM's policy in the paper)
   through the plugin's ``TransformersChat``: N candidates in one ``generate`` call vs N calls, every
   candidate forced to ``--new-tokens`` tokens: tokens/s.

Needs a CUDA GPU with ~40 GB free, ``pip install lmdeploy`` (with its CUDA dependencies) next to the
plugin, and ~20 GB of disk for the checkpoint (``--checkpoint DIR`` keeps it for later runs).

    python benchmarks/gpu_prm.py [--samples 8] [--n 8] [--steps 6] [--parallel 4] [--new-tokens 256]
    python benchmarks/gpu_prm.py --smoke   # CPU, a few-MB model, no LMDeploy: checks the script runs
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: InternVL2.5-8B's language model, InternLM2.5-7B (its llm_config), in Llama's layout.
TEXT = dict(
    vocab_size=92553,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=32768,
    rms_norm_eps=1e-5,
    rope_theta=1000000.0,
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=False,
)
#: Sizes for --smoke (CPU): same structure, tiny.
SMOKE_TEXT = dict(
    TEXT, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
SMOKE_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)
TILE, TILE_TOKENS, MAX_TILES = 448, 256, 12
WORDS = (
    "the side is so area angle triangle circle radius length value total sum of equals therefore "
    "option because each line point graph first next then finally"
).split()


def build_checkpoint(out: Path, smoke: bool) -> Path:
    """Random weights in bf16 (float32 for --smoke), saved with the tokenizer and InternVL's processor."""
    import torch
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
        LlamaConfig,
    )

    from vlmeval_prm.tiny import CHAT_TEMPLATE, _build_tokenizer

    if (out / "config.json").is_file():
        return out
    tokenizer = _build_tokenizer()
    text = LlamaConfig(
        **(SMOKE_TEXT if smoke else TEXT),
        architectures=["LlamaForCausalLM"],
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = InternVLVisionConfig(**(SMOKE_VISION if smoke else {}))  # the defaults are InternViT-300M-448px
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=TILE_TOKENS,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
        architectures=["InternVLForConditionalGeneration"],
    )
    device = "cpu" if smoke else "cuda"
    dtype = torch.float32 if smoke else torch.bfloat16
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # transformers' own random init, directly on the device
            model = InternVLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(out.name + ".building")
    model.save_pretrained(tmp)
    size = {"height": TILE, "width": TILE}
    InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=True, min_patches=1, max_patches=MAX_TILES),
        video_processor=InternVLVideoProcessor(size=size),
        tokenizer=tokenizer,
        image_seq_length=TILE_TOKENS,
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(tmp)
    del model
    tmp.rename(out)
    return out


def workload(folder: Path, samples: int, n: int, steps: int, image_size: tuple[int, int]):
    """(question, [image], candidates) per sample: one noisy JPEG each, candidates of 1 to ``steps`` steps."""
    from PIL import Image

    rng = random.Random(0)
    out = []
    for s in range(samples):
        path = folder / f"sample{s}.jpg"
        Image.frombytes("RGB", image_size, rng.randbytes(image_size[0] * image_size[1] * 3)).save(path, quality=70)
        question = " ".join(rng.choice(WORDS) for _ in range(40)) + "?"
        candidates = [
            [
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 40))) + "."
                for _ in range(rng.randint(1, steps))
            ]
            for _ in range(n)
        ]
        out.append((question, [str(path)], candidates))
    return out


def timed_scoring(prm, work, parallel: int = 1) -> tuple[float, int]:
    """(seconds, failed candidates) to score every sample, ``parallel`` samples at a time."""
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda item: prm.score(*item), work))
    return time.perf_counter() - start, sum(not r.ok for per in results for r in per)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lmdeploy_phase(ckpt: Path, work, parallel: int, concurrency: int, log_file: Path) -> list[str]:
    from vlmeval_prm.prm.lmdeploy_backend import LMDeployPRM

    port = free_port()
    cmd = [
        "lmdeploy",
        "serve",
        "api_server",
        str(ckpt),
        "--backend",
        "pytorch",
        "--logprobs-mode",
        "raw_logprobs",
        "--server-port",
        str(port),
        "--session-len",
        "32768",
        "--model-name",
        "visualprm-shape",
    ]
    with open(log_file, "w") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        prm = LMDeployPRM(f"http://127.0.0.1:{port}", mode="generate", concurrency=concurrency, startup_timeout=1800)
        try:
            prm.score(*work[0])  # warm-up
            n = sum(len(c) for _, _, c in work)
            one, failed_one = timed_scoring(prm, work)
            many, failed_many = timed_scoring(prm, work, parallel)
        finally:
            prm.close()
    finally:
        server.terminate()
        server.wait(timeout=120)
    return [
        f"LMDeploy client, one sample at a time: {n / one:.1f} candidates/s ({failed_one} failed)",
        f"LMDeploy client, {parallel} samples at a time: {n / many:.1f} candidates/s ({failed_many} failed)",
    ]


def in_process_phase(ckpt: Path, work, device: str, dtype: str) -> list[str]:
    import torch

    from vlmeval_prm.counters import COUNTS
    from vlmeval_prm.prm.hf_backend import TransformersPRM

    lines = []
    n = sum(len(c) for _, _, c in work)
    for share in (True, False):
        prm = TransformersPRM(str(ckpt), device=device, dtype=dtype, batch_size=len(work[0][2]), share_prefix=share)
        prm.score(*work[0])  # warm-up
        COUNTS.clear()
        seconds, failed = timed_scoring(prm, work)
        tokens = COUNTS["prm_prefill_tokens"] / len(work)
        lines.append(
            f"in-process, {'shared prefix' if share else 'every candidate in full'}: {n / seconds:.1f} "
            f"candidates/s, {tokens:,.0f} prefill tokens per sample ({failed} failed)"
        )
        del prm
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return lines


def policy_phase(ckpt: Path, work, n: int, new_tokens: int, device: str, dtype: str) -> list[str]:
    from vlmeval_prm.policy.transformers_chat import TransformersChat

    policy = TransformersChat(
        str(ckpt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        device=device,
        dtype=dtype,
        do_sample=True,
        temperature=0.7,
        top_p=0.95,
    )
    question, images, _ = work[0]
    message = [{"type": "image", "value": images[0]}, {"type": "text", "value": question}]
    policy._generate(message, 2)  # warm-up

    def timed(calls: int, per_call: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            policy._generate(message, per_call)
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        return time.perf_counter() - start

    batched, sequential = timed(1, n), timed(n, 1)
    tokens = n * new_tokens
    return [
        f"policy, {n} candidates x {new_tokens} tokens: batched {tokens / batched:.1f} tokens/s, "
        f"sequential {tokens / sequential:.1f} tokens/s ({sequential / batched:.1f}x)"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--n", type=int, default=8, help="candidates per sample")
    parser.add_argument("--steps", type=int, default=6, help="most steps per candidate")
    parser.add_argument("--image", default="896x672", help="image size WxH (896x672: 12 tiles + thumbnail)")
    parser.add_argument("--parallel", type=int, default=4, help="samples scored at once in the second LMDeploy run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256, help="policy tokens per candidate")
    parser.add_argument("--checkpoint", help="where to build (or find) the checkpoint; default: a temporary folder")
    parser.add_argument("--skip", nargs="*", default=[], choices=["lmdeploy", "in-process", "policy"])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, no LMDeploy: check the script runs")
    args = parser.parse_args()
    device, dtype = ("cpu", "float32") if args.smoke else ("cuda", "bfloat16")
    skip = set(args.skip) | ({"lmdeploy"} if args.smoke else set())
    if args.smoke:
        args.samples, args.n, args.new_tokens, args.image = 2, 2, 4, "300x200"
    import torch

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no CUDA GPU: run with --smoke to check the script on a CPU")
    image_size = tuple(int(v) for v in args.image.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(Path(args.checkpoint or Path(tmp) / "visualprm-8b-shape").resolve(), args.smoke)
        work = workload(Path(tmp), args.samples, args.n, args.steps, image_size)
        name = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name()
        lines = [
            f"VisualPRM-8B shape (InternViT-300M + InternLM2.5-7B), random weights, {dtype}, {name}; "
            f"{args.samples} samples x {args.n} candidates, 1 image {args.image} each"
        ]
        if "lmdeploy" not in skip:
            lines += lmdeploy_phase(ckpt, work, args.parallel, args.concurrency, Path(tmp) / "lmdeploy.log")
        if "in-process" not in skip:
            lines += in_process_phase(ckpt, work, device, dtype)
        if "policy" not in skip:
            lines += policy_phase(ckpt, work, args.n, args.new_tokens, device, dtype)
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
