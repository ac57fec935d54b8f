"""Throughput and cost of the LMDeploy PRM client in both request modes, against the concurrency limit.

Two servers, each in its own process with a fixed engine latency per inference request:

* ``lmdeploy``: LMDeploy 0.18's own api_server around the CPU stand-in engine
  (``standins.lmdeploy_standin``; its forward passes are cached after the warm-up). End to end, but
  on this 2-core machine LMDeploy's Python (image decoding, ~15 us per logprob row) is part of what
  is measured, and the server shares the CPUs with the client.
* ``replay``: the same server answering each request it has seen with its recorded response bytes
  (``--replay``): after the warm-up a request costs the server only uvicorn's HTTP handling (~1 ms),
  so what keeps throughput below the ideal is the client. This is the client's figure.

The model is the tiny PRM with its "+"/"-" logits raised (as in a trained PRM) so that the chat
fallback gets real values; the image is a 250 kB JPEG, sent as a data URL in every request. Prints,
per server and mode: requests and prompt tokens per candidate, logprob rows per candidate,
throughput against the concurrency-limited ideal (concurrency / latency requests per second) and
against the ideal wall time of the request pattern (with ``skip_prefix_rows`` one request must finish
before the candidates start), CPU time per request of the client and of the server process. A
last row per server replays the /generate requests with bare httpx clients that parse nothing.
The last line is ``client throughput / ideal at concurrency <C>: <ratio>`` (replay server, /generate).

    python benchmarks/bench_lmdeploy.py [--latency 2.0] [--concurrency 32] [--candidates 64] [--steps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

from PIL import Image

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the LMDeploy stand-in is test code, not in the wheel
sys.path.insert(0, str(TESTS))


SERVERS = {"replay": ["--replay"], "lmdeploy": []}
#: /generate variants of the plugin's client, then the chat fallback
VARIANTS = {
    "generate": {"mode": "generate"},
    "generate, skip prefix": {"mode": "generate", "skip_prefix_rows": True},
    "chat": {"mode": "chat"},
}


def start_server(model: str, latency: float, extra: list[str]) -> tuple[subprocess.Popen, str]:
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
        *extra,
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
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


def row(
    name: str,
    per_cand: float,
    prompt_tokens: float,
    rows: float,
    requests: int,
    waves: int,
    wall: float,
    cpu: float,
    server_cpu: float,
    concurrency: int,
    latency: float,
) -> dict:
    ideal = concurrency / latency
    return {
        "mode": name,
        "req/cand": per_cand,
        "prompt tok/cand": prompt_tokens,
        "rows/cand": rows,
        "requests sent": requests,
        "wall s": wall,
        "req/s": requests / wall,
        "ideal req/s": ideal,
        "of C/L": requests / wall / ideal,
        "of pattern": waves * latency / wall,
        "client CPU ms/req": 1000 * cpu / requests,
        "server CPU ms/req": 1000 * server_cpu / requests,
    }


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
        prm.score(question, images, candidates)  # warm-up: connections, forward cache, recorded responses
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
    per_cand = [r.meta["requests"] for r in results]
    waves = math.ceil(sum(per_cand) / concurrency) + (requests - sum(per_cand))  # + the serial prefix request
    return row(
        name,
        mean(per_cand),
        mean(r.meta["prompt_tokens"] for r in results),
        mean(r.meta.get("logprob_rows", r.meta["requests"]) for r in results),
        requests,
        waves,
        wall,
        cpu,
        server_cpu,
        concurrency,
        latency,
    )


def bare_client(
    url: str,
    server_pid: int,
    question: str,
    images: list[str],
    candidates: list[list[str]],
    concurrency: int,
    latency: float,
) -> dict:
    """The same /generate requests, encoded beforehand, sent by bare httpx clients (nothing parsed)."""
    import httpx

    from vlmeval_prm.prm.formats.visualprm import VisualPRMFormat
    from vlmeval_prm.prm.http import encode_json
    from vlmeval_prm.prm.lmdeploy_backend import GENERATE_TOP_LOGPROBS, IMAGE_TOKEN, image_data_url

    urls = [image_data_url(p) for p in images]
    bodies = [
        encode_json(
            {
                "prompt": VisualPRMFormat().render(question, c, len(urls), image=IMAGE_TOKEN + "\n"),
                "image_data": urls,
                "max_tokens": 0,
                "return_logprob": True,
                "stream": True,
                "top_logprobs_num": GENERATE_TOP_LOGPROBS,
                "logprob_start_len": 0,
            }
        )
        for c in candidates
    ]
    headers = {"Content-Type": "application/json"}

    async def send_all(clients: asyncio.Queue):
        async def one(body):
            client = await clients.get()
            try:
                (await client.post(f"{url}/generate", content=body, headers=headers)).raise_for_status()
            finally:
                clients.put_nowait(client)

        await asyncio.gather(*(one(b) for b in bodies))

    async def run():
        clients: asyncio.Queue = asyncio.Queue()
        for _ in range(concurrency):
            clients.put_nowait(httpx.AsyncClient(timeout=120))
        await send_all(clients)  # warm-up
        server0, cpu0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
        await send_all(clients)
        out = time.perf_counter() - t0, time.process_time() - cpu0, cpu_seconds(server_pid) - server0
        while not clients.empty():
            await clients.get_nowait().aclose()
        return out

    wall, cpu, server_cpu = asyncio.run(run())
    n = len(bodies)
    return row(
        "bare httpx (generate)",
        1,
        float("nan"),
        float("nan"),
        n,
        math.ceil(n / concurrency),
        wall,
        cpu,
        server_cpu,
        concurrency,
        latency,
    )


def photo(path: str, size: tuple[int, int] = (800, 600)) -> str:
    """A JPEG of noise, ~250 kB: an image's size in bytes as a benchmark photo or figure has it."""
    Image.frombytes("RGB", size, random.Random(0).randbytes(size[0] * size[1] * 3)).save(path, quality=60)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=2.0, help="engine seconds per request")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--servers", default="replay,lmdeploy", help=f"comma-separated, of {sorted(SERVERS)}")
    args = parser.parse_args()
    servers = args.servers.split(",")
    if "replay" not in servers or not set(servers) <= set(SERVERS):
        parser.error(f"--servers must include replay and name only {sorted(SERVERS)}")

    from standins.lmdeploy_standin import label_boosted_copy
    from vlmeval_prm.tiny import tiny_model_path

    question = "What is the area of the square?"
    candidates = [
        [
            f"Step {s + 1} of candidate {c}: the side is {c + s} so the area is {(c + s) ** 2}."
            for s in range(args.steps)
        ]
        for c in range(args.candidates)
    ]
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = label_boosted_copy(tiny_model_path("prm"), os.path.join(tmp, "prm"), {"+": 8.0, "-": 8.0})
        image = photo(os.path.join(tmp, "photo.jpg"))
        for server in servers:
            proc, url = start_server(model, args.latency, SERVERS[server])
            try:
                table[server] = [
                    run_mode(
                        url, proc.pid, name, options, question, [image], candidates, args.concurrency, args.latency
                    )
                    for name, options in VARIANTS.items()
                ]
                table[server].append(
                    bare_client(url, proc.pid, question, [image], candidates, args.concurrency, args.latency)
                )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        image_kb = os.path.getsize(image) / 1000

    print(
        f"LMDeploy PRM client: {args.candidates} candidates x {args.steps} steps, 1 image ({image_kb:.0f} kB), "
        f"engine latency {args.latency}s/request, concurrency {args.concurrency}"
    )
    keys = list(table["replay"][0])
    for server, rows in table.items():
        print(f"server: {server}")
        print(" | ".join(f"{k:>21}" if k == "mode" else f"{k:>9}" for k in keys))
        for r in rows:
            print(
                " | ".join(
                    f"{v:>21}" if k == "mode" else f"{v:>9.3f}" if isinstance(v, float) else f"{v!s:>9}"
                    for k, v in r.items()
                )
            )
    print(f"client throughput / ideal at concurrency {args.concurrency}: {table['replay'][0]['of C/L']:.3f}")


if __name__ == "__main__":
    main()
