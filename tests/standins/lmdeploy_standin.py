"""LMDeploy's own api_server around a CPU stand-in for its GPU engine, for tests and benchmarks.

What a client sees is LMDeploy 0.18's code: the FastAPI router (``create_openai_router``), its
request models and validation, the API-key middleware, sessions, the ``AsyncEngine`` request path
(context-length check, generation config, ``GenOut``) and the multimodal preprocessing that turns
``<IMAGE_TOKEN>`` and image URLs into image tokens. Only the model engine, which needs a GPU, is
replaced: ``_StandinEngine`` runs a transformers model on the CPU and returns logprob rows the way
LMDeploy's engines do (a row is the target or sampled token followed by the top-k; ``raw_logprobs``
is the log-softmax of the raw logits). ``engine="turbomind"`` serves with a TurboMind engine config:
LMDeploy then refuses prompt logprobs, and logprobs are taken after temperature/top-k/top-p, as
TurboMind does.

Faults (latency, error statuses, dropped connections, slow responses, a late start) are injected
around that app, so clients meet LMDeploy's real error bodies. Needs ``lmdeploy`` (installed with
``--no-deps``), ``fastapi``, ``uvicorn``, ``shortuuid``, ``mmengine-lite`` and ``pybase64``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from lmdeploy.messages import EngineOutput, GenerationConfig, ResponseType, ScheduleMetrics
from lmdeploy.serve.core.vl_async_engine import VLAsyncEngine

#: Requests that reach the engine; faults apply to these only, never to /health or /v1/encode.
INFERENCE_PATHS = ("/generate", "/v1/chat/completions", "/v1/completions")


class Faults:
    """Faults for the coming inference requests, queued in order; safe to change while serving."""

    def __init__(self, latency: float = 0.0):
        #: engine seconds added to every inference request (a model's prefill/decode time)
        self.latency = latency
        self._lock = threading.Lock()
        self._queue: collections.deque = collections.deque()

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next ``n`` inference requests with LMDeploy's error body for ``status``."""
        self._push(n, ("fail", status))

    def drop_next(self, n: int) -> None:
        """Close the connection of the next ``n`` inference requests without answering."""
        self._push(n, ("drop", None))

    def slow_next(self, n: int, seconds: float) -> None:
        """Hold the next ``n`` inference requests for ``seconds`` before serving them."""
        self._push(n, ("slow", seconds))

    def _push(self, n: int, action: tuple) -> None:
        with self._lock:
            self._queue.extend([action] * n)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def take(self) -> tuple | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None


@dataclass
class Stats:
    """What the server saw: HTTP requests per path, engine calls with their prompt tokens, and (when
    ``bodies`` is a list) every inference request's decoded JSON body as ``(path, body)``."""

    requests: collections.Counter = field(default_factory=collections.Counter)
    engine_calls: int = 0
    prompt_tokens: int = 0
    bodies: list | None = None


class _TorchRunner:
    """The transformers model behind the engine; one forward at a time."""

    def __init__(self, model_path: str, forward_cache: int = 0):
        from transformers import AutoModelForImageTextToText

        # eager attention: a prefix forward gives exactly the logits of the full forward (CPU)
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_path, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_size = forward_cache

    def logits(self, input_ids: list[int], multimodal: list[dict] | None):
        """[len(input_ids), vocab] float32 logits; image tokens are filled from ``pixel_values``."""
        pixels = torch.cat([m["pixel_values"] for m in multimodal]).float() if multimodal else None
        key = (tuple(input_ids), None if pixels is None else pixels.numpy().tobytes())
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            kwargs = {"input_ids": torch.tensor([input_ids])}
            if pixels is not None:
                kwargs["pixel_values"] = pixels
            with torch.inference_mode():
                out = self.model(**kwargs).logits[0].float()
            if self._cache_size:
                self._cache[key] = out
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            return out


def _rows(scores, chosen: list[int], k: int) -> list[dict[int, float]]:
    """LMDeploy's logprob rows: {chosen token: value, then the top-k tokens in order}."""
    own = scores.gather(-1, torch.tensor(chosen)[:, None])[:, 0].tolist()
    top_vals, top_ids = scores.topk(k, dim=-1) if k > 0 else (scores[:, :0], scores[:, :0].long())
    rows = []
    for tok, val, ids, vals in zip(chosen, own, top_ids.tolist(), top_vals.tolist()):
        row = {tok: val}
        for idx, v in zip(ids, vals):
            row.setdefault(idx, v)
        rows.append(row)
    return rows


def _processed(logits, gen_config: GenerationConfig):
    """Logits after temperature, top-k, top-p and min-p (what sampling, and TurboMind's logprobs, see)."""
    neg = float("-inf")
    if gen_config.temperature <= 0:  # greedy
        return logits.masked_fill(logits < logits.amax(-1, keepdim=True), neg)
    scores = logits / gen_config.temperature
    if gen_config.top_k > 0:
        kth = scores.topk(min(gen_config.top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, neg)
    probs = scores.softmax(-1)
    if gen_config.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = (sorted_probs.cumsum(-1) - sorted_probs) > gen_config.top_p
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), neg)
    if gen_config.min_p > 0:
        scores = scores.masked_fill(probs < gen_config.min_p * probs.amax(-1, keepdim=True), neg)
    return scores


class _StandinEngine:
    """Plays LMDeploy's model engine (``Engine``/``TurboMind``): instances, health, schedule metrics."""

    def __init__(self, engine_config, runner: _TorchRunner, faults: Faults, stats: Stats, turbomind: bool):
        self.engine_config = engine_config
        self.runner = runner
        self.faults = faults
        self.stats = stats
        self.turbomind = turbomind
        self.active = 0
        self.tick = 0

    def create_instance(self):
        return _EngineInstance(self)

    async def get_health_status(self) -> dict:
        return dict(alive=True, message="Stand-in engine is healthy.", schedule_metrics=self.get_schedule_metrics())

    def get_schedule_metrics(self) -> ScheduleMetrics:
        return ScheduleMetrics(active_seqs=self.active, scheduler_tick=self.tick)

    def end_session(self, session_id: int) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release: the model is freed with the app."""

    def scores(self, logits, gen_config: GenerationConfig):
        """Logprob values as the configured engine reports them."""
        if self.turbomind:
            return _processed(logits, gen_config).log_softmax(-1)
        if self.engine_config.logprobs_mode == "raw_logits":
            return logits
        return logits.log_softmax(-1)


class _EngineInstance:
    """One request handle of the pool ``AsyncEngine`` draws from."""

    def __init__(self, engine: _StandinEngine):
        self.engine = engine
        self._cancelled: set[int] = set()

    async def async_cancel(self, session_id: int) -> None:
        self._cancelled.add(session_id)

    async def async_end(self, session_id: int) -> None:
        self._cancelled.discard(session_id)

    async def async_stream_infer(
        self,
        session_id: int,
        input_ids: list[int],
        gen_config: GenerationConfig = None,
        multimodal=None,
        adapter_name=None,
        **kwargs,
    ):
        eng = self.engine
        gen_config = gen_config or GenerationConfig()
        eng.stats.engine_calls += 1
        eng.stats.prompt_tokens += len(input_ids)
        eng.active += 1
        try:
            if eng.faults.latency:
                await asyncio.sleep(eng.faults.latency)
            if gen_config.logprob_start_len >= 0:  # scoring only: rows for the prompt, nothing generated
                start = gen_config.logprob_start_len
                logits = await asyncio.to_thread(eng.runner.logits, input_ids, multimodal)
                rows = _rows(eng.scores(logits[start:-1], gen_config), input_ids[start + 1 :], gen_config.logprobs)
                eng.tick += 1
                yield EngineOutput(ResponseType.FINISH, [], logprobs=rows)
                return
            async for out in self._generate(session_id, input_ids, gen_config, multimodal):
                yield out
        finally:
            eng.active -= 1
            self._cancelled.discard(session_id)

    async def _generate(self, session_id, input_ids, gen_config, multimodal):
        eng = self.engine
        rng = torch.Generator().manual_seed(gen_config.random_seed or 0)
        stop_ids = set() if gen_config.ignore_eos else set(gen_config.stop_token_ids or [])
        generated: list[int] = []
        for step in range(gen_config.max_new_tokens):
            if session_id in self._cancelled:
                yield EngineOutput(ResponseType.CANCEL, [])
                return
            logits = (await asyncio.to_thread(eng.runner.logits, input_ids + generated, multimodal))[-1]
            probs = _processed(logits, gen_config).softmax(-1)
            token = int(torch.multinomial(probs, 1, generator=rng))
            generated.append(token)
            eng.tick += 1
            rows = None
            if gen_config.logprobs is not None:
                rows = _rows(eng.scores(logits, gen_config)[None], [token], gen_config.logprobs)
            last = step == gen_config.max_new_tokens - 1 or token in stop_ids
            yield EngineOutput(ResponseType.FINISH if last else ResponseType.SUCCESS, [token], logprobs=rows)
            if last:
                return


class _StandinAsyncEngine(VLAsyncEngine):
    """LMDeploy's VL ``AsyncEngine`` with the stand-in engine where the GPU engine would be built."""

    def __init__(self, model_path: str, standin: _StandinEngine, build_config, **kwargs):
        self._standin = standin
        super().__init__(model_path, backend="pytorch", backend_config=build_config, **kwargs)

    def _build_pytorch(self, model_path: str, backend_config=None, **kwargs):
        return self._standin


class _FaultMiddleware:
    """Outermost ASGI layer: counts requests and applies queued faults to inference requests."""

    def __init__(self, app, faults: Faults, stats: Stats):
        self.app = app
        self.faults = faults
        self.stats = stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.stats.requests[scope["path"]] += 1
        if self.stats.bodies is not None and scope["path"] in INFERENCE_PATHS:
            receive = _recording(receive, scope["path"], self.stats.bodies)
        action = self.faults.take() if scope["path"] in INFERENCE_PATHS else None
        if action is not None:
            kind, arg = action
            if kind == "fail":
                return await _error_response(arg)(scope, receive, send)
            if kind == "drop":
                return await _drop_connection(send)
            await asyncio.sleep(arg)
        await self.app(scope, receive, send)


def _recording(receive, path: str, bodies: list):
    """``receive`` that also appends the request's JSON body to ``bodies`` once it is complete."""
    chunks: list[bytes] = []

    async def wrapped():
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                bodies.append((path, json.loads(b"".join(chunks) or b"null")))
        return message

    return wrapped


class _ReplayMiddleware:
    """Answers an inference request it has answered before (same path, same body bytes) with the
    recorded response after the injected latency, without LMDeploy or the engine. For measuring a
    client alone: a replayed request costs the server only uvicorn's HTTP handling."""

    def __init__(self, app, faults: Faults):
        self.app = app
        self.faults = faults
        self._recorded: dict[tuple[str, bytes], list[dict]] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in INFERENCE_PATHS:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        key = (scope["path"], b"".join(chunks))
        if key in self._recorded:
            await asyncio.sleep(self.faults.latency)
            for message in self._recorded[key]:
                await send(message)
            return
        sent: list[dict] = []
        read = False

        async def replay_body():  # the body once, then the real channel (a streaming response waits on it)
            nonlocal read
            if read:
                return await receive()
            read = True
            return {"type": "http.request", "body": key[1], "more_body": False}

        async def recording(message):
            sent.append(message)
            await send(message)

        await self.app(scope, replay_body, recording)
        start = next((m for m in sent if m["type"] == "http.response.start"), None)
        if start is not None and start["status"] == 200:
            body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
            self._recorded[key] = [start, {"type": "http.response.body", "body": body, "more_body": False}]


def _error_response(status: int):
    """LMDeploy's own error body for ``status`` (the message of its matching error code)."""
    from lmdeploy.serve.core.exceptions import ErrorCode, RequestError
    from lmdeploy.serve.openai.errors import create_error_response, create_request_error_response

    codes = {500: ErrorCode.INTERNAL_ERROR, 503: ErrorCode.ENGINE_UNAVAILABLE, 499: ErrorCode.REQUEST_CANCELLED}
    if status in codes:
        return create_request_error_response(RequestError(codes[status]))
    return create_error_response(status, f"Injected error {status}.")


async def _drop_connection(send) -> None:
    # uvicorn's h11 protocol hands the app its RequestResponseCycle.send; the cycle owns the socket
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("dropping a connection needs uvicorn's h11 protocol (http='h11')")
    transport.abort()
    await asyncio.sleep(0.05)  # let uvicorn see the disconnect, so it does not try to answer


def build_app(
    model_path: str,
    *,
    model_name: str | None = None,
    api_keys: list[str] | None = None,
    session_len: int | None = None,
    logprobs_mode: str | None = "raw_logprobs",
    engine: str = "pytorch",
    max_batch_size: int = 256,
    forward_cache: int = 0,
    replay: bool = False,
    chat_template: str | None = None,
    faults: Faults | None = None,
    stats: Stats | None = None,
    log_level: str = "ERROR",
):
    """The ASGI app, assembled like ``lmdeploy.serve.openai.api_server.serve`` does.

    ``session_len`` is the context length (LMDeploy answers 400 beyond it); ``engine`` is
    "pytorch" or "turbomind"; ``forward_cache`` keeps that many forward results (benchmarks);
    ``replay`` answers a repeated inference request with its recorded response (``_ReplayMiddleware``);
    ``chat_template`` is ``--chat-template`` (a builtin name or a JSON file, read by LMDeploy's CLI
    helper); ``log_level`` is LMDeploy's logger level (``serve`` defaults to ERROR too).
    """
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from lmdeploy.cli.utils import get_chat_template
    from lmdeploy.messages import PytorchEngineConfig, TurbomindEngineConfig
    from lmdeploy.serve.core.generation_config import resolve_default_gen_config
    from lmdeploy.serve.openai.api_server import (
        ServerContext,
        create_lifespan_handler,
        set_parsers,
        validation_exception_handler,
    )
    from lmdeploy.serve.openai.endpoints import create_openai_router
    from lmdeploy.serve.utils.server_utils import AuthenticationMiddleware

    logging.getLogger("lmdeploy").setLevel(log_level)
    if engine not in ("pytorch", "turbomind"):
        raise ValueError(f"engine must be 'pytorch' or 'turbomind', got {engine!r}")
    faults = faults or Faults()
    stats = stats or Stats()
    # Requests always take LMDeploy's PyTorch-backend path (same image tokens); with "turbomind" the
    # engine reports TurboMind's config, which is what LMDeploy's endpoint checks look at.
    build_config = PytorchEngineConfig(
        session_len=session_len, max_batch_size=max_batch_size, logprobs_mode=logprobs_mode, enable_metrics=False
    )
    config = build_config
    if engine == "turbomind":
        config = TurbomindEngineConfig(session_len=session_len, max_batch_size=max_batch_size, enable_metrics=False)
    standin = _StandinEngine(config, _TorchRunner(model_path, forward_cache), faults, stats, engine == "turbomind")
    context = ServerContext()
    context.default_gen_config = resolve_default_gen_config("auto", model_path, False)
    context.async_engine = _StandinAsyncEngine(
        model_path,
        standin,
        build_config,
        model_name=model_name,
        chat_template_config=get_chat_template(chat_template, model_path),
    )
    config.session_len = context.async_engine.session_len
    set_parsers(context)
    app = FastAPI(
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=create_lifespan_handler(config, context.async_engine, context),
    )
    app.include_router(create_openai_router(context))
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    if api_keys:
        app.add_middleware(AuthenticationMiddleware, tokens=list(api_keys))
    return _FaultMiddleware(_ReplayMiddleware(app, faults) if replay else app, faults, stats)


def label_boosted_copy(src: str, dst: str, boosts: dict[str, float]) -> str:
    """Save a copy of a tiny model (``vlmeval_prm.tiny``) with some tokens' logits raised by a constant.

    Raising "+" and "-" alike leaves P(+) as it is but puts both labels at the top of every
    distribution, as in a trained PRM; LMDeploy's chat logprobs (top 20 at most) then report them.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmeval_prm.tiny import BIAS_DIM, NORMED_BIAS

    processor = AutoProcessor.from_pretrained(src)
    model = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():  # lm_head column BIAS_DIM is a per-token logit offset in the tiny models
        for token, boost in boosts.items():
            (idx,) = processor.tokenizer.encode(token, add_special_tokens=False)
            model.lm_head.weight[idx, BIAS_DIM] += boost / NORMED_BIAS
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    return dst


def without_chat_template(src: str, dst: str) -> str:
    """Copy a checkpoint without its chat template (``chat_template.jinja`` / ``chat_template.json`` and a
    ``chat_template`` entry in its JSON configs). Served, LMDeploy then falls back to its plain ``base``
    template, as for a real checkpoint that ships none."""
    import os
    import shutil

    shutil.copytree(src, dst)
    for name in os.listdir(dst):
        path = os.path.join(dst, name)
        if name in ("chat_template.jinja", "chat_template.json"):
            os.remove(path)
        elif name.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict) and data.pop("chat_template", None) is not None:
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=2)
    return dst


class StandinServer:
    """The app served by uvicorn on 127.0.0.1 in a background thread.

    With ``start_delay`` the port is bound but not listening for that long (connections are
    refused), as while LMDeploy loads weights.
    """

    def __init__(
        self, app, faults: Faults, stats: Stats, start_delay: float = 0.0, host: str = "127.0.0.1", port: int = 0
    ):
        import uvicorn

        self.faults, self.stats = faults, stats
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http="h11", lifespan="on"))
        self._start_delay = start_delay
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="lmdeploy-standin", daemon=True)

    def _run(self) -> None:
        if self._stop.wait(self._start_delay):
            return
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._server.serve(sockets=[self._sock])

    def start(self, timeout: float = 60.0) -> StandinServer:
        self._thread.start()
        if not self._start_delay:
            deadline = time.monotonic() + timeout
            while not self._server.started:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the LMDeploy stand-in server did not start")
                time.sleep(0.01)
        return self

    def hang(self) -> None:
        """Wedge like a stuck node: new connections are refused, open ones stay open and unanswered
        (set ``faults.latency`` high first so the engine holds its requests)."""

        def close_listeners() -> None:
            for listener in getattr(self._server, "servers", []):
                listener.close()

        self._loop.call_soon_threadsafe(close_listeners)

    def kill(self) -> None:
        """Die as a crashed server does: open connections are reset, new ones refused, nothing answers."""

        def abort() -> None:
            for listener in getattr(self._server, "servers", []):
                listener.close()
            for connection in list(self._server.server_state.connections):
                connection.transport.abort()

        self._server.force_exit = True
        self._server.should_exit = True
        self._loop.call_soon_threadsafe(abort)
        self._thread.join(timeout=30)

    def stop(self) -> None:
        self._stop.set()
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()


@contextlib.contextmanager
def serve_standin(
    model_path: str,
    *,
    start_delay: float = 0.0,
    latency: float = 0.0,
    record_bodies: bool = False,
    port: int = 0,
    **app_options,
) -> Iterator[StandinServer]:
    """Serve ``model_path`` (a directory, or "tiny:prm") until the block ends; yields the server.
    ``record_bodies`` keeps every inference request body in ``server.stats.bodies``; ``port`` 0 is a
    free one (give a dead server's port to bring it back at the same URL)."""
    from vlmeval_prm.loading import resolve_path

    faults, stats = Faults(latency), Stats(bodies=[] if record_bodies else None)
    app = build_app(resolve_path(model_path), faults=faults, stats=stats, **app_options)
    server = StandinServer(app, faults, stats, start_delay=start_delay, port=port).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground (benchmarks run the server in its own process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:prm")
    parser.add_argument("--model-name", default=None)
    parser.add_argument("--engine", default="pytorch", choices=["pytorch", "turbomind"])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--forward-cache", type=int, default=0)
    parser.add_argument("--replay", action="store_true", help="answer repeated requests with recorded responses")
    args = parser.parse_args(argv)
    with serve_standin(
        args.model,
        latency=args.latency,
        model_name=args.model_name,
        engine=args.engine,
        forward_cache=args.forward_cache,
        replay=args.replay,
    ) as server:
        print(f"READY {server.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
