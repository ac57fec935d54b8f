"""Client-side cost and throughput of the LMDeploy PRM backend in both request modes.

The server is LMDeploy 0.18's own api_server around the CPU stand-in engine
(``standins.lmdeploy_standin``), run in its own process with a fixed per-request engine
latency, so the client's share of the work is what is measured. The model is the tiny PRM with
its "+"/"-" logits raised (as in a trained PRM) so that the chat fallback gets real values; the
stand-in caches forward passes so its CPU time stays out of the way after the warm-up.

Prints, per mode: requests and prompt tokens per candidate, logprob rows returned per candidate,
throughput against the concurrency-limited ideal (concurrency / latency requests per second;
goal >= 0.9), the same against the ideal wall time of the request pattern (with
``skip_prefix_rows`` a shared-prefix request must finish before the candidates start), and CPU
time per request of the client and, for scale, of the server process (LMDeploy's Python). A last
row replays the /generate requests with a bare httpx client that parses nothing: the ceiling this
server and machine allow, to tell client overhead from server overhead.

    python benchmarks/bench_lmdeploy.py [--latency 2.0] [--concurrency 32] [--candidates 64] [--steps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

from PIL import Image

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the LMDeploy stand-in is test code, not in the wheel
sys.path.insert(0, str(TESTS))


def start_server(model: str, latency: float) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "standins.lmdeploy_standin",
        "--model",
        model,
        "--model-name",
        "tiny-prm",
        "--latency",
        str(latency),
        "--forward-cache",
        "4096",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        },
    )
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"stand-in server did not start: {line!r}")
    return proc, line.split()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(
    url: str,
    server_pid: int,
    name: str,
    options: dict,
    question: str,
    images: list[str],
    candidates: list[list[str]],
    concurrency: int,
    latency: float,
) -> dict:
    from vlmeval_prm.prm.lmdeploy_backend import LMDeployPRM

    prm = LMDeployPRM(url, concurrency=concurrency, **options)
    try:
        prm.score(question, images, candidates)  # warm-up: connections, server forward cache
        sent0, server0 = prm.requests_sent, cpu_seconds(server_pid)
        cpu0, t0 = time.process_time(), time.perf_counter()
        results = prm.score(question, images, candidates)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        requests, server_cpu = prm.requests_sent - sent0, cpu_seconds(server_pid) - server0
    finally:
        prm.close()
    failures = [r.error for r in results if not r.ok]
    if failures:
        raise RuntimeError(f"{name}: {len(failures)} candidates failed, e.g. {failures[0]}")
    ideal = concurrency / latency
    per_cand = [r.meta["requests"] for r in results]
    waves = math.ceil(sum(per_cand) / concurrency) + (requests - sum(per_cand))  # + the serial prefix request
    rows = [r.meta.get("logprob_rows", r.meta["requests"]) for r in results]
    return {
        "mode": name,
        "req/cand": mean(per_cand),
        "prompt tok/cand": mean(r.meta["prompt_tokens"] for r in results),
        "rows/cand": mean(rows),
        "requests sent": requests,
        "wall s": wall,
        "req/s": requests / wall,
        "ideal req/s": ideal,
        "of C/L": requests / wall / ideal,
        "of pattern": waves * latency / wall,
        "client CPU ms/req": 1000 * cpu / requests,
        "server CPU ms/req": 1000 * server_cpu / requests,
    }


def bare_client(
    url: str,
    server_pid: int,
    question: str,
    images: list[str],
    candidates: list[list[str]],
    concurrency: int,
    latency: float,
) -> dict:
    """The same /generate requests, prepared beforehand, sent by httpx alone (nothing parsed)."""
    import httpx

    from vlmeval_prm.prm.conversation import PRMFormat, render_prompt
    from vlmeval_prm.prm.lmdeploy_backend import GENERATE_TOP_LOGPROBS, IMAGE_TOKEN, image_data_url

    urls = [image_data_url(p) for p in images]
    payloads = [
        {
            "prompt": render_prompt(question, c, len(urls), PRMFormat(), image=IMAGE_TOKEN + "\n"),
            "image_data": urls,
            "max_tokens": 0,
            "return_logprob": True,
            "stream": True,
            "top_logprobs_num": GENERATE_TOP_LOGPROBS,
            "logprob_start_len": 0,
        }
        for c in candidates
    ]

    async def send_all(pools, slots):
        async def one(i, payload):
            async with slots:
                resp = await pools[i % len(pools)].post(f"{url}/generate", json=payload)
                resp.raise_for_status()

        await asyncio.gather(*(one(i, p) for i, p in enumerate(payloads)))

    async def run():
        pools = [
            httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=8)) for _ in range(0, concurrency, 8)
        ]
        slots = asyncio.Semaphore(concurrency)
        await send_all(pools, slots)  # warm-up
        server0, cpu0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
        await send_all(pools, slots)
        out = time.perf_counter() - t0, time.process_time() - cpu0, cpu_seconds(server_pid) - server0
        for pool in pools:
            await pool.aclose()
        return out

    wall, cpu, server_cpu = asyncio.run(run())
    n = len(payloads)
    return {
        "mode": "bare httpx (generate)",
        "req/cand": 1,
        "prompt tok/cand": float("nan"),
        "rows/cand": float("nan"),
        "requests sent": n,
        "wall s": wall,
        "req/s": n / wall,
        "ideal req/s": concurrency / latency,
        "of C/L": n / wall / (concurrency / latency),
        "of pattern": math.ceil(n / concurrency) * latency / wall,
        "client CPU ms/req": 1000 * cpu / n,
        "server CPU ms/req": 1000 * server_cpu / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=2.0, help="engine seconds per request")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from standins.lmdeploy_standin import label_boosted_copy
    from vlmeval_prm.tiny import tiny_model_path

    with tempfile.TemporaryDirectory() as tmp:
        model = label_boosted_copy(tiny_model_path("prm"), os.path.join(tmp, "prm"), {"+": 8.0, "-": 8.0})
        image = os.path.join(tmp, "figure.png")
        Image.new("RGB", (320, 240), (30, 120, 200)).save(image)
        candidates = [
            [
                f"Step {s + 1} of candidate {c}: the side is {c + s} so the area is {(c + s) ** 2}."
                for s in range(args.steps)
            ]
            for c in range(args.candidates)
        ]
        proc, url = start_server(model, args.latency)
        try:
            variants = {
                "generate": {"mode": "generate"},
                "generate, skip prefix": {"mode": "generate", "skip_prefix_rows": True},
                "chat": {"mode": "chat"},
            }
            question = "What is the area of the square?"
            rows = [
                run_mode(url, proc.pid, name, options, question, [image], candidates, args.concurrency, args.latency)
                for name, options in variants.items()
            ]
            rows.append(bare_client(url, proc.pid, question, [image], candidates, args.concurrency, args.latency))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(
        f"LMDeploy PRM client: {args.candidates} candidates x {args.steps} steps, 1 image, "
        f"engine latency {args.latency}s/request, concurrency {args.concurrency}"
    )
    keys = list(rows[0])
    print(" | ".join(f"{k:>21}" if k == "mode" else f"{k:>9}" for k in keys))
    for row in rows:
        print(
            " | ".join(
                f"{v:>21}" if k == "mode" else f"{v:>9.3f}" if isinstance(v, float) else f"{v!s:>9}"
                for k, v in row.items()
            )
        )


if __name__ == "__main__":
    main()
