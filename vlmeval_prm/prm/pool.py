"""Several PRM servers (LMDeploy api_servers, vLLM servers) used as one: least outstanding requests,
health checks, failover.

``lmdeploy serve proxy`` routes only the OpenAI routes, not ``/generate``, ``/v1/encode`` or
``/health``, so a PRM client that scores with ``/generate`` balances across servers itself:

* each request goes to the live server with the fewest requests in flight (ties: the one that
  has served fewest), picked when the request gets one of the client's concurrency slots;
* a connection error or timeout triggers a ``/health`` check of that server, and while requests
  are in flight every server is checked every ``health_interval`` s; a server that fails the check
  is taken out, its in-flight requests are cancelled and sent to the others, and it is taken back
  once ``/health`` answers again with the same model;
* a request moved off a dead server does not count against its retries; other retryable failures
  (5xx, 499, a timeout on a server that is still healthy) are retried with backoff;
* with no live server, requests wait (one log line per ``WAIT_REPORT_INTERVAL``) up to
  ``wait_timeout`` s, then fail: a recorded failure, never a score.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlmeval_prm.logs import get_logger
from vlmeval_prm.prm.http import WAIT_REPORT_INTERVAL, AsyncJSONClient, RequestFailed

log = get_logger(__name__)


@dataclass(eq=False)
class Server:
    """One api_server: what the client learned at start-up, and its state in the pool."""

    url: str
    model: str
    mode: str = ""
    pattern: list[int] = field(default_factory=list)  # LMDeploy: the assistant header and "+" label ids
    bad_id: int | None = None
    alive: bool = True
    outstanding: int = 0
    served: int = 0
    inflight: set = field(default_factory=set)  # asyncio tasks of the requests on this server
    evicted: set = field(default_factory=set)  # those cancelled because the server went down


@dataclass
class Reply:
    """A request's answer, the server that gave it, and how often it was moved off a dead server."""

    body: Any
    server: Server
    moved: int = 0


def _reduce_from(reduce: Callable[[Any, Server], Any], server: Server, body: Any) -> Any:
    return reduce(body, server)


def _being_cancelled() -> bool:
    """Whether the running task itself has a pending cancellation (Python 3.11+ can tell)."""
    task = asyncio.current_task()
    return bool(task is not None and getattr(task, "cancelling", lambda: 0)())


def pooled_client(
    api_key: str | None,
    *,
    timeout: float,
    connect_timeout: float,
    max_retries: int,
    backoff: float,
    concurrency: int,
    health_interval: float,
    health_timeout: float,
    wait_timeout: float,
) -> tuple[AsyncJSONClient, ServerPool]:
    """The HTTP client and the (empty) pool a served PRM's client uses; call it on the loop that will use them."""
    http = AsyncJSONClient(
        api_key=api_key,
        timeout=timeout,
        connect_timeout=connect_timeout,
        max_retries=max_retries,
        backoff=backoff,
        concurrency=concurrency,
    )
    pool = ServerPool(http, health_interval=health_interval, health_timeout=health_timeout, wait_timeout=wait_timeout)
    return http, pool


class ServerPool:
    """The servers behind one PRM spec. Lives on the client's event loop."""

    def __init__(
        self,
        http: AsyncJSONClient,
        *,
        health_interval: float = 10.0,
        health_timeout: float = 10.0,
        wait_timeout: float = 600.0,
    ):
        self._http = http
        self.servers: list[Server] = []
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.wait_timeout = wait_timeout
        self._changed = asyncio.Event()
        self._monitor: asyncio.Task | None = None

    def add(self, server: Server) -> None:
        self.servers.append(server)
        self._changed.set()

    @property
    def outstanding(self) -> int:
        return sum(s.outstanding for s in self.servers)

    async def request(
        self,
        method: str,
        path: str,
        payload: dict | None = None,
        events: bool = False,
        reduce: Callable[[Any, Server], Any] | None = None,
    ) -> Reply:
        """``method path`` on the least-loaded live server; raises ``RequestFailed`` for good.
        ``reduce(body, server)``: what the reply carries instead of the decoded body (see ``send``)."""
        retries = moved = 0
        while True:
            async with self._http.slot() as conn:
                server = await self._pick()
                task = asyncio.ensure_future(
                    self._http.send(
                        conn,
                        method,
                        server.url + path,
                        payload,
                        events,
                        None if reduce is None else functools.partial(_reduce_from, reduce, server),
                    )
                )
                server.outstanding += 1
                server.inflight.add(task)
                self._watch()
                try:
                    body = await task
                    server.served += 1
                    return Reply(body, server, moved)
                except asyncio.CancelledError:
                    # moved only when _down cancelled it (its server died), never when our caller cancels
                    if task not in server.evicted or _being_cancelled():
                        raise
                    moved += 1
                    continue
                except RequestFailed as exc:
                    if not exc.retryable:
                        raise
                    if exc.status is None and await self._check(server):
                        moved += 1
                        continue
                    if retries == self._http.max_retries:
                        raise
                    error = exc
                finally:
                    server.outstanding -= 1
                    server.inflight.discard(task)
                    server.evicted.discard(task)
            delay = self._http.retry_delay(retries)
            retries += 1
            log.warning("%s; retry %d/%d in %.1fs", error, retries, self._http.max_retries, delay)
            await asyncio.sleep(delay)

    async def _pick(self) -> Server:
        """The live server with the fewest requests in flight; waits while none is alive."""
        start = next_report = time.monotonic()
        while True:
            live = [s for s in self.servers if s.alive]
            if live:
                return min(live, key=lambda s: (s.outstanding, s.served))
            now = time.monotonic()
            if now - start >= self.wait_timeout:
                raise RequestFailed(
                    f"no PRM server is healthy after waiting {self.wait_timeout:.0f}s "
                    f"({', '.join(s.url for s in self.servers)})",
                    retryable=True,
                )
            if now >= next_report:
                log.warning(
                    "no PRM server is healthy (%s); waiting for one to come back (%.0f of %.0fs)",
                    ", ".join(s.url for s in self.servers),
                    now - start,
                    self.wait_timeout,
                )
                next_report = now + WAIT_REPORT_INTERVAL
            self._watch(force=True)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(self.health_interval, self.wait_timeout))
            except asyncio.TimeoutError:
                pass

    async def _check(self, server: Server) -> bool:
        """After a connection failure: True when the server is down (and now taken out)."""
        if not server.alive:
            return True
        reason = await self._http.health(server.url, self.health_timeout)
        if reason is not None:
            self._down(server, reason)
        return reason is not None

    def _down(self, server: Server, reason: str) -> None:
        if not server.alive:
            return
        server.alive = False
        others = [s.url for s in self.servers if s.alive]
        log.warning(
            "PRM server %s is down (%s); moving its %d in-flight requests to %s",
            server.url,
            reason,
            len(server.inflight),
            ", ".join(others) or "the first server that comes back",
        )
        for task in list(server.inflight):
            server.evicted.add(task)
            task.cancel()
        self._watch(force=True)

    def _watch(self, force: bool = False) -> None:
        """Run the health monitor while requests are in flight or a server is down."""
        if (force or self.outstanding) and (self._monitor is None or self._monitor.done()):
            self._monitor = asyncio.ensure_future(self._health_loop())

    async def _health_loop(self) -> None:
        while self.outstanding or not all(s.alive for s in self.servers):
            await asyncio.sleep(self.health_interval)
            await asyncio.gather(*(self._probe(s) for s in self.servers))

    async def _probe(self, server: Server) -> None:
        reason = await self._http.health(server.url, self.health_timeout)
        if reason is not None:
            self._down(server, reason)
        elif not server.alive and await self._same_model(server):
            server.alive = True
            log.info("PRM server %s is back", server.url)
            self._changed.set()

    async def _same_model(self, server: Server) -> bool:
        try:
            models = await self._http.request("GET", f"{server.url}/v1/models")
            return models["data"][0]["id"] == server.model
        except (RequestFailed, KeyError, IndexError, TypeError):
            return False

    async def aclose(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
