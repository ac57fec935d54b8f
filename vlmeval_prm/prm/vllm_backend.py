"""PRMs served by vLLM's OpenAI-compatible server (``vllm serve``). Schema: vLLM 0.34.0 (62d4bc3c7).

Head formats (Qwen2.5-Math-PRM, a token-classification head): vLLM serves the PRM as a pooling model,
STEP pooling keeping the head's per-token output at the step-tag token, after a softmax. The client sends
the format's conversation as chat ``messages`` to ``POST /pooling`` (``task: token_classify``; the server
renders them with the checkpoint's chat template, without a generation prompt) and reads one ``[p0, p1]``
row per step, P(class 1) its score (``vllm/entrypoints/pooling/pooling/protocol.py``: ``PoolingChatRequest``,
``PoolingResponse``; ``vllm/model_executor/layers/pooler/tokwise/methods.py``: ``StepPool``).

Label formats (VL-PRM: P("+") against "-" before each assistant label): one ``POST /v1/chat/completions`` per
candidate with the whole conversation (images as data URLs), ``max_tokens: 1``, and vLLM's ``prompt_logprobs``
extension with ``return_token_ids`` (``vllm/entrypoints/openai/chat_completion/protocol.py``: the response's
top-level ``prompt_logprobs``, one ``{token id: {logprob, rank, decoded_token}}`` per prompt token holding
the actual token and the top k, and ``prompt_token_ids``). The labels are found in the prompt's token ids as
the assistant header followed by the good label (both tokenised by the server, ``POST /tokenize``); a label
below the top k bounds the score, as the LMDeploy client does.

Several servers (comma-separated URLs) share the work through the same pool as LMDeploy's (least
outstanding requests, health checks on ``/health``, failover); a failed request is a recorded failure.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
from collections.abc import Sequence

from vlmeval_prm.logs import get_logger
from vlmeval_prm.prm.base import PRMScorer, StepScores, failed, prepare
from vlmeval_prm.prm.conversation import chat_messages
from vlmeval_prm.prm.formats import DEFAULT_FORMAT, FORMAT_DEFAULT, build_format, check_backend
from vlmeval_prm.prm.http import AsyncJSONClient, LoopThread, RequestFailed
from vlmeval_prm.prm.lmdeploy_backend import model_name, served_model, server_urls, two_way
from vlmeval_prm.prm.pool import Server, ServerPool, pooled_client

log = get_logger(__name__)

#: The environment variable holding the key of ``vllm serve --api-key`` (vLLM reads the same name).
KEY_ENV = "VLLM_API_KEY"
#: ``prompt_logprobs`` k by default: vLLM's default ``--max-logprobs``.
TOP_LOGPROBS = 20


class VLLMPRM(PRMScorer):
    """``vllm:http://host:8000[,http://host2:8000]``: a PRM format (``format``) on vLLM servers: pooling
    servers for head formats (``qwen-math-prm``), chat servers with prompt logprobs for label formats
    (``vl-prm``). ``system_prompt``: the format's own unless given. ``top_logprobs``: prompt logprobs per
    token (k; the server's ``--max-logprobs`` caps it, -1 for all: exact scores).
    ``concurrency``: requests in flight in all; ``timeout``/``connect_timeout``: seconds per attempt;
    ``max_retries``/``backoff``: retries of connection errors, timeouts and 5xx; ``startup_timeout``: how
    long to wait for ``/health`` while a server loads. The key: ``api_key`` or ``VLLM_API_KEY``."""

    identity_from_server = True

    def __init__(
        self,
        target: str,
        format: str = DEFAULT_FORMAT,
        system_prompt: str | None = FORMAT_DEFAULT,
        top_logprobs: int = TOP_LOGPROBS,
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
        check_backend(format, "vllm")
        if top_logprobs < 1 and top_logprobs != -1:
            raise ValueError(f"top_logprobs must be >= 1, or -1 for the whole vocabulary; got {top_logprobs}")
        self.fmt = build_format(format, system_prompt=system_prompt)
        self.top_logprobs = top_logprobs
        self.urls = server_urls(target)
        self._loop = LoopThread("prm-vllm")
        key = api_key or os.environ.get(KEY_ENV) or None

        async def start() -> tuple[AsyncJSONClient, ServerPool]:
            http, pool = pooled_client(
                key,
                timeout=timeout,
                connect_timeout=connect_timeout,
                max_retries=max_retries,
                backoff=backoff,
                concurrency=concurrency,
                health_interval=health_interval,
                health_timeout=health_timeout,
                wait_timeout=startup_timeout,
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
        if not self.fmt.head:
            try:
                self.pattern, self.labels = self._loop.run(self._label_tokens())
            except BaseException:
                self.close()
                raise
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
        out = {"backend": "vllm", "model": served, "format": fmt.identity()}
        if not fmt.head:  # which bound a label below the top k gives
            out["top_logprobs"] = options["top_logprobs"]
        return out

    def score(
        self, question: str, images: Sequence[str], candidates: Sequence[Sequence[str]], mode: str = "step"
    ) -> list[StepScores]:
        steps_list, results = prepare(candidates, mode)
        if images:
            log.debug("%s is a text PRM: the question's images are not sent", self.fmt.name)
        todo = [i for i, r in enumerate(results) if r is None]

        try:
            urls = [self._image_url(p) for p in images] if not self.fmt.text_only else []
        except ValueError as exc:
            return [r or failed(steps_list[i], str(exc)) for i, r in enumerate(results)]
        score_one = self._score_one if self.fmt.head else self._score_labels

        async def run() -> list[StepScores]:
            return await asyncio.gather(*(score_one(question, urls, steps_list[i]) for i in todo))

        for i, res in zip(todo, self._loop.run(run())):
            results[i] = res
        return results  # type: ignore[return-value]

    def _image_url(self, path: str) -> str:
        """The image as the format opens it (VL-PRM: its first resize), sent losslessly as a PNG data URL;
        the server's processor does the rest with the format's ``processor_kwargs``."""
        image = self.fmt.load_image(path)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    async def _label_tokens(self) -> tuple[list[int], tuple[int, int]]:
        """The token ids of the assistant header followed by the good label, and of the two labels, as the
        server tokenises them (``POST /tokenize``): the header is what its chat template adds as the
        generation prompt of a probe conversation."""
        server = self.pool.servers[0]
        probe = [{"role": "user", "content": "1 + 1 = 2."}]

        async def tokens(**body) -> list[int]:
            return (await self._http.request("POST", f"{server.url}/tokenize", {"model": self._model, **body}))[
                "tokens"
            ]

        bare = await tokens(messages=probe, add_generation_prompt=False)
        prompted = await tokens(messages=probe, add_generation_prompt=True)
        if prompted[: len(bare)] != bare or len(prompted) == len(bare):
            raise ValueError(f"{server.url}: cannot find the assistant header of the served chat template")
        ids = []
        for label in (self.fmt.good_token, self.fmt.bad_token):
            found = await tokens(prompt=label, add_special_tokens=False)
            if len(found) != 1:
                raise ValueError(f"{server.url}: the served tokenizer splits {label!r} into {len(found)} tokens")
            ids.append(found[0])
        return prompted[len(bare) :] + [ids[0]], (ids[0], ids[1])

    async def _score_labels(self, question: str, urls: list[str], steps: list[str]) -> StepScores:
        messages = chat_messages(self.fmt.conversation(question, steps, len(urls)), urls)
        payload = {
            "model": self._model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": self.top_logprobs,
            "return_token_ids": True,
        }
        if self.fmt.processor_kwargs:
            payload["mm_processor_kwargs"] = dict(self.fmt.processor_kwargs)
        try:
            reply = await self.pool.request("POST", "/v1/chat/completions", payload)
        except RequestFailed as exc:
            return failed(steps, str(exc), transient=exc.retryable)
        ids, rows = reply.body.get("prompt_token_ids"), reply.body.get("prompt_logprobs")
        if not ids or not rows or len(ids) != len(rows):
            return failed(steps, f"{reply.server.url} returned no prompt logprobs with their token ids (vLLM >= 0.11)")
        p, n = self.pattern, len(self.pattern)
        at = [j for j in range(n - 1, len(ids)) if ids[j - n + 1 : j + 1] == p]
        if len(at) != len(steps):
            return failed(steps, f"found {len(at)} score placeholders for {len(steps)} steps")
        good, bad = (str(t) for t in self.labels)
        values = []
        for j in at:
            row = rows[j]
            reported = [
                v["logprob"]
                for v in row.values()
                if self.top_logprobs == -1 or (v.get("rank") or 0) <= self.top_logprobs
            ]
            values.append(two_way(row[good]["logprob"], (row.get(bad) or {}).get("logprob"), min(reported)))
        bounds = [b for _, b in values]
        meta = {"server": reply.server.url, "requests": 1, "moved": reply.moved, "prompt_tokens": len(ids)}
        if any(bounds):
            meta["bounded_steps"] = sum(b is not None for b in bounds)
        return StepScores(steps=steps, scores=[v for v, _ in values], bounds=bounds if any(bounds) else None, meta=meta)

    async def _score_one(self, question: str, urls: list[str], steps: list[str]) -> StepScores:
        messages = self.fmt.text_messages(question, steps)
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
