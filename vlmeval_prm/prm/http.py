"""One shared async HTTP client for served PRMs: bounded concurrency, timeouts, retries with backoff.

It runs on its own event loop in a daemon thread, so the synchronous ``PRMScorer`` API can drive
many concurrent requests from any caller, including one that is itself inside a running loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
from orjson import loads as json_loads  # a /generate body 3x faster than json (0.75 vs 2.4 ms, 900 rows x top 5)

from vlmeval_prm.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")

#: What ``health`` reports for a server without the /health route (e.g. ``lmdeploy serve proxy``).
NO_HEALTH_ROUTE = "has no /health route (HTTP 404)"
#: Seconds between two "still waiting" lines while a server loads.
WAIT_REPORT_INTERVAL = 30.0

#: Statuses worth another try: the server failed or cancelled, the request was fine. Other 4xx
#: (400 invalid or too long, 401 key, 404 model, 409 conflict) fail the same way every time.
RETRY_STATUSES = frozenset({499, 500, 502, 503, 504})


class RawJSON(str):
    """Text that is already JSON, written into a request body as it is by ``encode_json``: a sample's
    images go into JSON once for all its requests, not once per request (a 600 kB image costs
    json.dumps ~2 ms per request; splicing it in costs ~0.1 ms)."""


_dumps = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON, as httpx's ``json=`` writes it, with ``RawJSON`` values as they are."""
    return _encode(value).encode("utf-8")


def _encode(value: Any) -> str:
    if isinstance(value, RawJSON):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_dumps(str(k))}:{_encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(_encode, value)) + "]"
    return _dumps(value)


@contextlib.contextmanager
def gc_paused():
    """The cyclic garbage collector off for the block. Decoding a /generate body allocates ~10k lists
    that live until the block ends; in a process with a large heap (torch, a policy model) they set
    off full collections that cost more than decoding (12 ms instead of 2 ms per body, measured with
    transformers imported). Decoded JSON holds no cycles, so reference counting frees all of it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class RequestFailed(Exception):
    """A request that failed for good. ``status`` is the HTTP status, None when nothing came back."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class LoopThread:
    """An event loop running in a daemon thread; ``run`` blocks the caller until a coroutine ends."""

    def __init__(self, name: str = "prm-http"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def _error_text(resp: httpx.Response) -> str:
    """LMDeploy's ``{"message", "type"}`` error body as one line, or the start of any other body."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict) and "message" in body:
        return f"{body.get('type', 'error')}: {body['message']}"
    return str(body)[:300]


def _events(text: str, what: str) -> list:
    """The JSON ``data:`` events of a server-sent-event body, up to ``[DONE]``."""
    out = []
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        event = json_loads(data)
        if isinstance(event, dict) and isinstance(event.get("error"), dict):
            err = event["error"]
            status = err.get("code") if isinstance(err.get("code"), int) else None
            raise RequestFailed(
                f"{what} failed mid-stream: HTTP {status} ({err.get('type', 'error')}: {err.get('message')})",
                status=status,
                retryable=status in RETRY_STATUSES,
            )
        out.append(event)
    return out


class AsyncJSONClient:
    """JSON over HTTP with at most ``concurrency`` requests in flight, over small connection pools.

    Connection errors, timeouts and the statuses in ``RETRY_STATUSES`` are retried up to
    ``max_retries`` times with jittered exponential backoff; anything else fails at once. An API
    key goes into the client's headers only (httpx masks it in reprs); it is never logged.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        concurrency: int = 32,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # One httpx client per request slot. httpcore 1.0 rescans a client's whole connection pool on
        # every request event (~4 ms of CPU per request with 32 connections in one pool); a client
        # that has one request in flight at a time holds one connection per server it talks to.
        # Loading the CA certificates takes ~50 ms: once, shared by all clients.
        ssl_context = httpx.create_ssl_context()
        self._pools = [
            httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=connect_timeout),
                verify=ssl_context,
                limits=httpx.Limits(max_connections=None),
            )
            for _ in range(concurrency)
        ]
        self._slots: asyncio.Queue = asyncio.Queue()
        for pool in range(concurrency):
            self._slots.put_nowait(pool)
        # health probes open a new connection each time: a node that refuses connections is down even
        # while connections it accepted earlier still answer
        self._probes = httpx.AsyncClient(
            headers=headers, verify=ssl_context, limits=httpx.Limits(max_keepalive_connections=0)
        )
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        #: requests sent, retries included
        self.sent = 0

    async def request(self, method: str, url: str, payload: dict | None = None, events: bool = False) -> Any:
        """The decoded JSON answer; raises ``RequestFailed`` once retries are spent.

        ``events=True`` reads a server-sent-event stream to its end and returns its JSON events; an
        ``{"error": {...}}`` event (LMDeploy's way to fail after the stream started) raises.
        """
        for attempt in range(self.max_retries + 1):
            try:
                return await self._once(method, url, payload, events)
            except RequestFailed as exc:
                if not exc.retryable or attempt == self.max_retries:
                    raise
                delay = self.retry_delay(attempt)
                log.warning("%s; retry %d/%d in %.1fs", exc, attempt + 1, self.max_retries, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def retry_delay(self, attempt: int) -> float:
        """Seconds before retry ``attempt + 1``: jittered exponential backoff."""
        return min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)

    async def _once(self, method: str, url: str, payload: dict | None, events: bool) -> Any:
        async with self.slot() as pool:
            return await self.send(pool, method, url, payload, events)

    @contextlib.asynccontextmanager
    async def slot(self):
        """One of the ``concurrency`` request slots (a connection pool index) for the block."""
        pool = await self._slots.get()
        try:
            yield pool
        finally:
            self._slots.put_nowait(pool)

    async def send(
        self,
        pool: int,
        method: str,
        url: str,
        payload: dict | None = None,
        events: bool = False,
        reduce: Callable[[Any], Any] | None = None,
    ) -> Any:
        """One attempt over connection pool ``pool`` (from :meth:`slot`); raises ``RequestFailed``.
        ``reduce``: applied to the decoded body while the collector is still off (``gc_paused``), so
        a large body is decoded, reduced to what the caller keeps, and freed in one step."""
        try:
            self.sent += 1
            resp = await self._pools[pool].request(
                method,
                url,
                content=None if payload is None else encode_json(payload),
                headers=None if payload is None else {"Content-Type": "application/json"},
            )
        except httpx.TimeoutException as exc:
            raise RequestFailed(f"{method} {url} timed out ({type(exc).__name__})", retryable=True) from None
        except httpx.TransportError as exc:
            raise RequestFailed(
                f"{method} {url} failed: connection error ({type(exc).__name__}: {exc})", retryable=True
            ) from None
        if resp.status_code >= 400:
            raise RequestFailed(
                f"{method} {url} answered HTTP {resp.status_code} ({_error_text(resp)})",
                status=resp.status_code,
                retryable=resp.status_code in RETRY_STATUSES,
            )
        with gc_paused():
            try:
                body = _events(resp.text, f"{method} {url}") if events else json_loads(resp.content)
            except ValueError:
                raise RequestFailed(
                    f"{method} {url} answered with a body that is not JSON: {resp.text[:200]!r}"
                ) from None
            if reduce is not None:
                body = reduce(body)  # the decoded body is freed here, before the collector is back
        return body

    async def health(self, base_url: str, timeout: float) -> str | None:
        """None when ``/health`` answers 200 within ``timeout`` s, else what went wrong (one attempt)."""
        try:
            resp = await self._probes.get(f"{base_url}/health", timeout=timeout)
        except httpx.TimeoutException:
            return f"/health did not answer within {timeout:g}s"
        except httpx.TransportError as exc:
            return f"cannot connect ({type(exc).__name__})"
        if resp.status_code == 404:
            return f"{NO_HEALTH_ROUTE} ({_error_text(resp)})"
        return None if resp.status_code == 200 else f"/health answered HTTP {resp.status_code} ({_error_text(resp)})"

    async def wait_healthy(
        self,
        base_url: str,
        timeout: float,
        interval: float = 1.0,
        report_every: float = WAIT_REPORT_INTERVAL,
        server: str = "LMDeploy",
        command: str = "lmdeploy serve api_server",
    ) -> None:
        """Poll ``/health`` until it answers 200. LMDeploy keeps its port closed while loading weights
        and answers 503 until its engine is healthy; both count as "not yet" for up to ``timeout`` s.
        While waiting, one line with the URL every ``report_every`` s."""
        start = time.monotonic()
        next_report = start
        while True:
            last = await self.health(base_url, min(10.0, max(timeout, 0.1)))
            if last is not None and last.startswith(NO_HEALTH_ROUTE):
                raise RuntimeError(
                    f"{base_url} {last}: it is not an LMDeploy api_server. `lmdeploy serve proxy` routes only "
                    "/v1/chat/completions, /v1/completions and /v1/models, not the /health, /v1/encode and "
                    "/generate the PRM client needs: list the api_servers in the spec instead "
                    "(lmdeploy:http://a:23333,http://b:23333); the client balances them itself."
                )
            if last is None:
                if next_report > start:
                    log.info("%s server at %s is up", server, base_url)
                return
            now = time.monotonic()
            if now - start >= timeout:
                raise RuntimeError(
                    f"{server} server at {base_url} is not healthy after {timeout:.0f}s: {last}. Is "
                    f"`{command}` running there and done loading the model?"
                )
            if now >= next_report:
                log.info(
                    "waiting for the %s server at %s (%.0f of %.0fs; still loading?): %s",
                    server,
                    base_url,
                    now - start,
                    timeout,
                    last,
                )
                next_report = now + report_every
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        for pool in [*self._pools, self._probes]:
            await pool.aclose()
