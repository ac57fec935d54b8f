"""PRMs served by vLLM's OpenAI-compatible server (``vllm serve``), for formats read from a head.

A PRM with a token-classification head (Qwen2.5-Math-PRM) is served by vLLM as a pooling model: STEP
pooling keeps the head's per-token output at the step-tag token, after a softmax. The client sends the
format's conversation as chat ``messages`` to ``POST /pooling`` (``task: token_classify``; the server
renders them with the checkpoint's chat template, without a generation prompt) and reads one
``[p0, p1]`` row per step, P(class 1) its score. Schema: vLLM 0.34.0 (62d4bc3c7)
``vllm/entrypoints/pooling/pooling/protocol.py`` (``PoolingChatRequest``, ``PoolingResponse``) and
``vllm/model_executor/layers/pooler/tokwise/methods.py`` (``StepPool``).

Several servers (comma-separated URLs) share the work through the same pool as LMDeploy's (least
outstanding requests, health checks on ``/health``, failover); a failed request is a recorded failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from vlmeval_prm.logs import get_logger
from vlmeval_prm.prm.base import PRMScorer, StepScores, failed, prepare
from vlmeval_prm.prm.formats import DEFAULT_FORMAT, FORMAT_DEFAULT, build_format, format_class
from vlmeval_prm.prm.http import AsyncJSONClient, LoopThread, RequestFailed
from vlmeval_prm.prm.lmdeploy_backend import model_name, served_model, server_urls
from vlmeval_prm.prm.pool import Server, ServerPool

log = get_logger(__name__)

#: The environment variable holding the key of ``vllm serve --api-key`` (vLLM reads the same name).
KEY_ENV = "VLLM_API_KEY"


class VLLMPRM(PRMScorer):
    """``vllm:http://host:8000[,http://host2:8000]``: a head-read PRM format (``format``, e.g.
    ``qwen-math-prm``) on vLLM pooling servers. ``system_prompt``: the format's own unless given.
    ``concurrency``: requests in flight in all; ``timeout``/``connect_timeout``: seconds per attempt;
    ``max_retries``/``backoff``: retries of connection errors, timeouts and 5xx; ``startup_timeout``: how
    long to wait for ``/health`` while a server loads. The key: ``api_key`` or ``VLLM_API_KEY``."""

    identity_from_server = True

    def __init__(
        self,
        target: str,
        format: str = DEFAULT_FORMAT,
        system_prompt: str | None = FORMAT_DEFAULT,
        concurrency: int = 32,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        startup_timeout: float = 600.0,
        health_interval: float = 10.0,
        health_timeout: float = 10.0,
        api_key: str | None = None,
    ):
        check_format(format)
        self.fmt = build_format(format, system_prompt=system_prompt)
        self.urls = server_urls(target)
        self._loop = LoopThread("prm-vllm")
        key = api_key or os.environ.get(KEY_ENV) or None

        async def start() -> tuple[AsyncJSONClient, ServerPool]:
            http = AsyncJSONClient(
                api_key=key,
                timeout=timeout,
                connect_timeout=connect_timeout,
                max_retries=max_retries,
                backoff=backoff,
                concurrency=concurrency,
            )
            pool = ServerPool(
                http, health_interval=health_interval, health_timeout=health_timeout, wait_timeout=startup_timeout
            )
            for url in self.urls:
                await http.wait_healthy(url, startup_timeout, server="vLLM", command="vllm serve")
                pool.add(Server(url=url, model=model_name(await http.request("GET", f"{url}/v1/models"))))
            return http, pool

        try:
            self._http, self.pool = self._loop.run(start())
        except BaseException:
            self._loop.close()
            raise
        models = {s.model for s in self.pool.servers}
        if len(models) != 1:
            self.close()
            raise ValueError(f"the vLLM servers {self.urls} serve different models: {sorted(models)}")
        self._model = models.pop()
        self.identity = f"vllm:{self._model}"
        log.info(
            "vLLM PRM %s (%s format): %d server(s), one /pooling request per candidate",
            self._model,
            format,
            len(self.urls),
        )

    @property
    def served_model(self) -> str:
        return self._model

    @classmethod
    def identity_of(cls, target: str, options: dict, served: str | None = None) -> dict:
        """The model the servers name and what it is shown (the format); not timeouts, retries, concurrency."""
        if served is None:
            served = served_model(
                server_urls(target), options["api_key"], options["connect_timeout"], options["startup_timeout"], KEY_ENV
            )
        fmt = build_format(options["format"], system_prompt=options["system_prompt"])
        return {"backend": "vllm", "model": served, "format": fmt.identity()}

    def score(
        self, question: str, images: Sequence[str], candidates: Sequence[Sequence[str]], mode: str = "step"
    ) -> list[StepScores]:
        steps_list, results = prepare(candidates, mode)
        if images:
            log.debug("%s is a text PRM: the question's images are not sent", self.fmt.name)
        todo = [i for i, r in enumerate(results) if r is None]

        async def run() -> list[StepScores]:
            return await asyncio.gather(*(self._score_one(question, steps_list[i]) for i in todo))

        for i, res in zip(todo, self._loop.run(run())):
            results[i] = res
        return results  # type: ignore[return-value]

    async def _score_one(self, question: str, steps: list[str]) -> StepScores:
        messages = [{"role": t.role, "content": "".join(t.parts)} for t in self.fmt.conversation(question, steps, 0)]
        payload = {"model": self._model, "task": "token_classify", "messages": messages}
        try:
            reply = await self.pool.request("POST", "/pooling", payload)
        except RequestFailed as exc:
            return failed(steps, str(exc), transient=exc.retryable)
        try:
            rows = reply.body["data"][0]["data"]
            scores = [float(row[1]) for row in rows]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return failed(
                steps, f"{reply.server.url}/pooling answered without per-step rows: {type(exc).__name__}: {exc}"
            )
        if len(scores) != len(steps):
            return failed(
                steps,
                f"{reply.server.url}/pooling returned {len(scores)} step rows for {len(steps)} steps (is the server's "
                f"step_tag_id the token {self.fmt.marker!r}?)",
            )
        meta = {"server": reply.server.url, "requests": 1, "moved": reply.moved}
        usage = reply.body.get("usage") or {}
        if "prompt_tokens" in usage:
            meta["prompt_tokens"] = usage["prompt_tokens"]
        return StepScores(steps=steps, scores=scores, meta=meta)

    def close(self) -> None:
        async def shut() -> None:
            await self.pool.aclose()
            await self._http.aclose()

        if getattr(self, "pool", None) is not None:
            self._loop.run(shut())
            self.pool = None
        self._loop.close()


def check_format(name: str) -> None:
    """ValueError unless format ``name`` can be scored on vLLM by this client."""
    fmt = format_class(name)
    if "vllm" not in fmt.backends:
        raise ValueError(f"the {name} format has no vllm backend (it has {', '.join(fmt.backends)})")
