"""Tokens per second of Best-of-N sampling on a GPU: N candidates in one ``generate`` call
(``num_return_sequences=N``, what the batched route does) vs N calls (what VLMEvalKit's wrappers do).

The model is Qwen2.5-VL-7B's architecture (config values from its ``config.json``) with random bf16
weights, built on the GPU: nothing is downloaded. The prompt is one 448x448 image (through
transformers' own Qwen2-VL image processor) plus random text tokens; every candidate is forced to
``--new-tokens`` tokens, so both modes produce the same number of tokens. Not run in CI.

    python benchmarks/bench_policy_gpu.py [--n 1 4 8 16] [--new-tokens 256] [--prompt-tokens 512]
    python benchmarks/bench_policy_gpu.py --device cpu --layers 1 --vision-depth 1 --n 2 --new-tokens 4  # smoke test
"""

from __future__ import annotations

import argparse
import time

#: Qwen/Qwen2.5-VL-7B-Instruct config.json (the values that shape compute).
TEXT = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    bos_token_id=151643,
    eos_token_id=151645,
    tie_word_embeddings=False,
)
VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    hidden_act="silu",
    in_channels=3,
    tokens_per_second=2,
)
IMAGE, VISION_START, VISION_END = 151655, 151652, 151653


def build(args):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = {**TEXT, "num_hidden_layers": args.layers or TEXT["num_hidden_layers"]}
    vision = {**VISION, "depth": args.vision_depth or VISION["depth"]}
    vision["fullatt_block_indexes"] = [i for i in VISION["fullatt_block_indexes"] if i < vision["depth"]]
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=IMAGE,
        video_token_id=151656,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=False,
    )
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):  # transformers' own random init, directly on the device
            model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    model.generation_config.pad_token_id = TEXT["eos_token_id"]
    return model, dtype


def inputs(args, dtype):
    import torch
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    image = Image.new("RGB", (448, 448), "white")
    pix = Qwen2VLImageProcessor(min_pixels=448 * 448, max_pixels=448 * 448)(images=[image], return_tensors="pt")
    n_image = int(pix["image_grid_thw"].prod()) // 4
    gen = torch.Generator().manual_seed(1)
    text = torch.randint(0, 150000, (args.prompt_tokens,), generator=gen)
    ids = torch.cat([torch.tensor([VISION_START]), torch.full((n_image,), IMAGE), torch.tensor([VISION_END]), text])
    return {
        "input_ids": ids[None].to(args.device),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=args.device),
        "pixel_values": pix["pixel_values"].to(args.device, dtype),
        "image_grid_thw": pix["image_grid_thw"].to(args.device),
    }


def timed(model, batch, n, new_tokens, device):
    import torch

    kwargs = dict(
        do_sample=True,
        temperature=0.7,
        top_p=0.95,
        top_k=0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        num_return_sequences=n,
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, **kwargs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    assert out.shape[0] == n and out.shape[1] - batch["input_ids"].shape[1] == new_tokens
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, help="text layers (default: the 7B's 28)")
    parser.add_argument("--vision-depth", type=int, help="vision blocks (default: the 7B's 32)")
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    model, dtype = build(args)
    batch = inputs(args, dtype)
    timed(model, batch, 2, min(8, args.new_tokens), args.device)  # warm-up (kernels, allocator)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(
        f"Qwen2.5-VL-7B architecture, random weights, {dtype}, {name}; prompt {batch['input_ids'].shape[1]} "
        f"tokens incl. one 448 px image, {args.new_tokens} new tokens per candidate"
    )
    print(f"{'N':>3} {'sequential tok/s':>17} {'batched tok/s':>14} {'speed-up':>9}")
    for n in args.n:
        seq = sum(timed(model, batch, 1, args.new_tokens, args.device) for _ in range(n))
        bat = timed(model, batch, n, args.new_tokens, args.device)
        tokens = n * args.new_tokens
        print(f"{n:>3} {tokens / seq:>17.1f} {tokens / bat:>14.1f} {seq / bat:>8.1f}x")


if __name__ == "__main__":
    main()
