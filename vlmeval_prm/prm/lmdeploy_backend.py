"""VisualPRM scores from LMDeploy api_server(s) over HTTP.

Two ways to read P(+) at each step, chosen by probing the server once (or ``mode=``):

* ``generate`` (one request per candidate): ``POST /generate`` with the whole VisualPRM conversation
  rendered as text (LMDeploy uses a /generate prompt verbatim, no chat template; ``<IMAGE_TOKEN>``
  marks each image), ``max_tokens: 0`` and prompt logprobs (``return_logprob``,
  ``logprob_start_len``, ``top_logprobs_num``). Needs the PyTorch engine started with
  ``--logprobs-mode raw_logprobs`` (``raw_logits`` works too). At each "+" placeholder lp(+) is the
  row's own logprob and lp(-) comes from the row's top-k (5 by default). Rows cost api_server CPU,
  so the request streams (``stream: true``): LMDeploy then writes the rows with pydantic's encoder,
  not FastAPI's ``jsonable_encoder``, which takes ~40x longer (about 10 us per (logprob, id) pair).
  Each row still costs the api_server ~15 us of Python. ``skip_prefix_rows=True`` spends one extra
  request per ``score`` call (one round trip, one prefill of the prefix) to measure the prefix all
  candidates share (system turn, image tokens) and skips its rows with ``logprob_start_len``:
  worth it when many clients share a server and images are large (an InternVL tile is 256 tokens).
* ``chat`` (fallback for TurboMind and servers without prompt logprobs, one request per step):
  ``/v1/chat/completions`` on the conversation up to the step with ``max_tokens: 1``, logprobs and
  ``top_logprobs`` (at most 20), temperature 1, top_p 1, top_k 0 (TurboMind takes logprobs after
  those filters). The sampled token is merged with ``top_logprobs``, which never repeats it. The
  server applies its own chat template there, and reports tokens as text, so labels are matched by
  their token text.

Both modes send the conversation VisualPRM-8B was trained on (``conversation.py``); in chat mode the
server renders it, so its chat template is checked against ours at start-up. Several servers are
balanced by the client itself (``pool.py``): ``lmdeploy serve proxy`` routes none of /generate,
/v1/encode or /health.

Either way P(+) = 1 / (1 + exp(lp(-) - lp(+))), the two-way softmax of the logits. When one label is
missing from the top-k its logprob is only known to be at most the k-th largest; that gives a bound
on P(+), recorded in ``StepScores.bounds`` ("lower"/"upper") and ``meta``, never a made-up value.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import math
import mimetypes
import os
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from vlmeval_prm.logs import get_logger
from vlmeval_prm.prm.base import PRMScorer, StepScores, failed, prepare
from vlmeval_prm.prm.conversation import chat_messages, chat_template
from vlmeval_prm.prm.formats import DEFAULT_FORMAT, FORMAT_DEFAULT, build_format
from vlmeval_prm.prm.http import LoopThread, RawJSON, RequestFailed
from vlmeval_prm.prm.pool import Server, pooled_client

log = get_logger(__name__)

MODES = ("auto", "generate", "chat")
#: LMDeploy's placeholder for an image inside a /generate prompt.
IMAGE_TOKEN = "<IMAGE_TOKEN>"
#: The most top_logprobs LMDeploy's /v1/chat/completions accepts (one row per request: take them all).
CHAT_MAX_TOP_LOGPROBS = 20
#: Default top-k per prompt row in /generate: a trained PRM puts "+" and "-" first at its placeholders.
GENERATE_TOP_LOGPROBS = 5
#: Rows kept before the measured shared prefix ends, in case its last tokens merge with what follows.
PREFIX_MARGIN = 8
#: Seconds the other servers get to be ready once the first one is; later ones join in the background.
JOIN_GRACE = 5.0


def server_urls(target: str) -> list[str]:
    """The server URLs of an ``lmdeploy:`` spec target (comma-separated); raises on a malformed one."""
    urls = [u.strip().rstrip("/") for u in target.split(",") if u.strip()]
    if not urls:
        raise ValueError(f"no server URL in {target!r}")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s)://host[:port] URL")
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number)
        except ValueError as exc:
            raise ValueError(f"{url!r}: {exc}") from None
    return urls


def api_key_of(api_key: str | None) -> str | None:
    """The key sent as a Bearer token: the ``api_key`` option, else ``LMDEPLOY_API_KEY``."""
    return api_key or os.environ.get("LMDEPLOY_API_KEY") or None


def model_name(models: dict) -> str:
    """The served model's name in a ``GET /v1/models`` answer."""
    return models["data"][0]["id"]


def served_model(
    urls: list[str], api_key: str | None, timeout: float, wait: float, key_env: str = "LMDEPLOY_API_KEY"
) -> str:
    """The model the servers serve, as the first to answer ``GET /v1/models`` names it (one request
    when a server is up). Waits up to ``wait`` s for one to answer, as scoring would. The key is
    ``api_key``, else ``$key_env``."""
    key = api_key or os.environ.get(key_env) or None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline, waiting = time.monotonic() + wait, False
    while True:
        for url in urls:
            try:
                reply = httpx.get(f"{url}/v1/models", headers=headers, timeout=timeout)
            except httpx.TransportError as exc:
                last = f"{url}: {type(exc).__name__}"
                continue
            if reply.is_success:
                return model_name(reply.json())
            hint = f"; check the api_key option or {key_env}" if reply.status_code == 401 else ""
            if reply.status_code < 500:
                raise ValueError(f"{url}/v1/models answered HTTP {reply.status_code}{hint}")
            last = f"{url}: HTTP {reply.status_code}"
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no PRM server named its model within {wait:.0f}s (last: {last})")
        if not waiting:
            waiting = True
            log.info("waiting up to %.0fs for a PRM server to name its model (stored scores are tied to it)", wait)
        time.sleep(1.0)


def two_way(lp_good: float | None, lp_bad: float | None, cutoff: float) -> tuple[float, str | None] | None:
    """P(+) from the label logprobs, or a bound when one label is below the reported top-k.

    ``cutoff`` is the k-th largest logprob: any token not reported has a logprob <= cutoff.
    Returns (value, None) when exact, (bound, "lower"/"upper") when one label is missing, and None
    when both are missing (nothing can be said).
    """
    if lp_good is not None and lp_bad is not None:
        return _sigmoid(lp_good - lp_bad), None
    if lp_good is not None:
        return _sigmoid(lp_good - cutoff), "lower"
    if lp_bad is not None:
        return _sigmoid(cutoff - lp_bad), "upper"
    return None


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def merge_chat_logprobs(entry: dict, k: int) -> tuple[dict[str, float], float]:
    """(token -> logprob for every reported token, cutoff) from one chat ``logprobs.content`` entry.

    LMDeploy reports the sampled token apart from ``top_logprobs`` and leaves it out of that list.
    If the list is short of ``k`` the sampled token was one of the top-k, so it counts for the cutoff.
    """
    top = {t["token"]: t["logprob"] for t in entry.get("top_logprobs") or []}
    ranked = dict(top)
    if len(top) < k:
        ranked[entry["token"]] = entry["logprob"]
    reported = {**top, entry["token"]: entry["logprob"]}
    return reported, min(ranked.values())


def image_data_url(path: str) -> str:
    """The file's own bytes as a base64 data URL (no decoding or re-encoding)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"image could not be read: {path}: {exc}") from exc
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _read_rows(events: list, server: Server, *, n_steps: int) -> tuple[list, int | None, int] | str:
    """(P(+) or bound per step, prompt tokens, rows) from a /generate stream's events, or what is wrong."""
    # LMDeploy 0.18 sends the prompt rows once, on the last event; gather them in order regardless
    metas = [e.get("meta_info") or {} for e in events]
    rows = [r for m in metas for r in m.get("input_token_logprobs") or []]
    tops = [t for m in metas for t in m.get("input_top_logprobs") or []]
    if not rows or len(tops) != len(rows):
        return (
            f"{server.url} returned no prompt logprobs; start it with the PyTorch engine and "
            "--logprobs-mode raw_logprobs"
        )
    targets = [tok for _, tok in rows]  # row j: the distribution that predicts targets[j]
    pattern, n = server.pattern, len(server.pattern)
    places = [
        j for j in range(n - 1, len(targets)) if targets[j] == pattern[-1] and targets[j - n + 1 : j + 1] == pattern
    ]
    if len(places) != n_steps:
        return f"found {len(places)} score placeholders for {n_steps} steps"
    values = []
    for j in places:
        top = {tok: lp for lp, tok in tops[j]}
        values.append(two_way(rows[j][0], top.get(server.bad_id), min(top.values())))
    return values, (metas[-1] if metas else {}).get("prompt_tokens"), len(rows)


class LMDeployPRM(PRMScorer):
    """PRMScorer over one or more LMDeploy api_servers (``target``: URLs separated by commas).

    Requests are balanced over the servers by the client itself (``pool.ServerPool``: least
    outstanding requests, health checks, a dead server's in-flight work moved to the others). All
    servers must serve the same model; the mode is one they all support. Servers that are not up
    when the first one is ready join later (``JOIN_GRACE``). ``mode``: "auto" (probe), "generate"
    or "chat". ``top_logprobs``: k per row (default 5 for generate, 20, the most allowed, for chat).
    ``concurrency``: requests in flight in all. ``timeout``/``connect_timeout``: seconds per
    attempt; ``max_retries``/``backoff``: retries of connection errors, timeouts, 499 and 5xx.
    ``startup_timeout``: how long to wait for ``/health`` while a server loads, and for a live
    server when all are down. ``health_interval``/``health_timeout``: the health checks.
    ``format``: the PRM format (``prm.formats``; VisualPRM's by default), ``system_prompt``: the format's
    own unless given, ``template``: see ``conversation.ChatTemplate`` (it frames /generate
    prompts; in chat mode the server applies its own, checked at start-up against ours). The API
    key comes from ``api_key`` or ``LMDEPLOY_API_KEY``; it is sent as a Bearer token, kept nowhere else.
    """

    def __init__(
        self,
        target: str,
        format: str = DEFAULT_FORMAT,
        system_prompt: str | None = FORMAT_DEFAULT,
        template: str | dict | None = None,
        mode: str = "auto",
        top_logprobs: int | None = None,
        concurrency: int = 32,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        startup_timeout: float = 600.0,
        health_interval: float = 10.0,
        health_timeout: float = 10.0,
        api_key: str | None = None,
        skip_prefix_rows: bool = False,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if top_logprobs is not None and top_logprobs < 1:
            raise ValueError(f"top_logprobs must be >= 1, got {top_logprobs}")
        self.urls = server_urls(target)
        self.fmt = build_format(format, system_prompt=system_prompt, template=chat_template(template))
        self.skip_prefix_rows = skip_prefix_rows
        self._startup_timeout = startup_timeout
        self._ready: list[Server] = []  # connected before the mode was decided
        self._failures: dict[str, Exception] = {}
        self._decided = False
        self._background: set = set()
        self._loop = LoopThread()
        key = api_key_of(api_key)

        async def make_clients():  # built on the loop that will use them
            return pooled_client(
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

        self._http, self.pool = self._loop.run(make_clients())
        try:
            self._loop.run(self._start(mode))
        except BaseException:
            self.close()
            raise
        servers = self.pool.servers
        default_k = GENERATE_TOP_LOGPROBS if self.mode == "generate" else CHAT_MAX_TOP_LOGPROBS
        self.top_logprobs = top_logprobs or default_k
        if self.mode == "chat":
            self.top_logprobs = min(self.top_logprobs, CHAT_MAX_TOP_LOGPROBS)
        self.identity = f"lmdeploy:{self._model}@{self.mode}"
        log.info(
            "LMDeploy PRM %s: %d of %d server(s) ready, %s",
            self.identity,
            len(servers),
            len(self.urls),
            "one /generate request per candidate (prompt logprobs)"
            if self.mode == "generate"
            else "fallback: one /v1/chat/completions request per step",
        )

    #: The model this PRM scores with is what its servers name: a connected scorer knows it.
    identity_from_server = True

    @property
    def served_model(self) -> str:
        """The model every server of this scorer names in ``/v1/models``."""
        return self._model

    @classmethod
    def identity_of(cls, target: str, options: dict, served: str | None = None) -> dict:
        """What this PRM's scores depend on: the model the servers name (``served``, from a connected
        scorer; else one ``GET /v1/models``), not their URLs; what it is shown (system prompt, labels,
        template); the read-out (``mode``, ``top_logprobs``, which bound a missing label). Not timeouts,
        retries, concurrency or ``skip_prefix_rows``: they change speed, not scores."""
        if served is None:
            served = served_model(
                server_urls(target), options["api_key"], options["connect_timeout"], options["startup_timeout"]
            )
        return {
            "backend": "lmdeploy",
            "model": served,
            "format": build_format(
                options["format"], system_prompt=options["system_prompt"], template=chat_template(options["template"])
            ).identity(),
            "mode": options["mode"],
            "top_logprobs": options["top_logprobs"],
        }

    def __repr__(self) -> str:
        return f"LMDeployPRM(urls={self.urls!r}, mode={getattr(self, 'mode', None)!r})"

    @property
    def servers(self) -> list[Server]:
        return self.pool.servers

    @property
    def requests_sent(self) -> int:
        """HTTP requests sent so far, retries and start-up probes included."""
        return self._http.sent

    # -- start-up ------------------------------------------------------------------------------

    async def _start(self, mode: str) -> None:
        """Connect to every server at once; go as soon as one is ready and the others had JOIN_GRACE s."""
        tasks = {asyncio.ensure_future(self._connect_one(url, mode)): url for url in self.urls}
        self._background.update(tasks)
        pending = set(tasks)
        while pending and not self._ready:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready:  # every server failed: the first one's reason
            raise next(iter(self._failures.values()))
        if pending:
            await asyncio.wait(pending, timeout=JOIN_GRACE)
        for url, exc in self._failures.items():
            log.warning("PRM server %s is left out: %s", url, exc)
        for task, url in tasks.items():
            if not task.done():
                log.info("PRM server %s is not ready yet; it joins when it is", url)
        ready = list(self._ready)
        models = {s.model for s in ready}
        if len(models) > 1:
            raise ValueError(f"the servers serve different models: {sorted(models)}")
        self._model = ready[0].model
        self.mode = "generate" if all(s.mode == "generate" for s in ready) else "chat"
        self._decided = True  # from here on, a server that gets ready joins by itself
        for server in ready:
            await self._admit(server)

    async def _connect_one(self, url: str, mode: str) -> None:
        try:
            server = await self._connect(url, mode)
        except Exception as exc:
            if self._decided:
                log.warning("PRM server %s did not join: %s", url, exc)
            else:
                self._failures[url] = exc
            return
        if not self._decided:
            self._ready.append(server)
            return
        try:
            if server.model != self._model:
                raise ValueError(f"it serves {server.model!r}, the others {self._model!r}")
            if self.mode == "generate" and server.mode != "generate":
                raise ValueError("it gives no prompt logprobs, the others score with /generate")
            await self._admit(server)
        except (ValueError, RequestFailed) as exc:
            log.warning("PRM server %s is left out: %s", url, exc)
            return
        log.info("PRM server %s joined", url)

    async def _admit(self, server: Server) -> None:
        server.mode = self.mode
        if self.mode == "chat":
            await self._check_chat_template(server)
        self.pool.add(server)

    async def _connect(self, url: str, mode: str) -> Server:
        await self._http.wait_healthy(url, self._startup_timeout)
        try:
            models = await self._http.request("GET", f"{url}/v1/models")
        except RequestFailed as exc:
            if exc.status == 401:
                raise RequestFailed(f"{exc}; check the api_key option or LMDEPLOY_API_KEY", 401) from None
            raise
        model = model_name(models)
        good, bad = self.fmt.good_token, self.fmt.bad_token
        header = self.fmt.template.header("assistant")
        enc = await self._http.request(
            "POST", f"{url}/v1/encode", {"input": [good, bad, header + good], "add_bos": False}
        )
        ids = enc["input_ids"]
        for label, label_ids in ((good, ids[0]), (bad, ids[1])):
            if len(label_ids) != 1:
                raise ValueError(
                    f"{url}: the PRM tokenizer splits {label!r} into {len(label_ids)} tokens; "
                    "a one-token label is required"
                )
        pattern = ids[2]
        if pattern[-1:] != ids[0]:
            raise ValueError(f"{url}: {good!r} does not stay one token after the assistant header {header!r}")
        if mode == "auto":
            mode = await self._probe(url, header + good)
        return Server(url=url, model=model, mode=mode, pattern=pattern, bad_id=ids[1][0])

    async def _probe(self, url: str, prompt: str) -> str:
        """ "generate" if /generate returns prompt logprobs, else "chat" (server's reason logged)."""
        payload = {
            "prompt": prompt,
            "max_tokens": 0,
            "return_logprob": True,
            "top_logprobs_num": 1,
            "logprob_start_len": 0,
        }
        try:
            body = await self._http.request("POST", f"{url}/generate", payload)
        except RequestFailed as exc:
            if exc.status is None or exc.status >= 500:
                raise
            log.info("%s gives no prompt logprobs (%s); using the chat fallback", url, exc)
            return "chat"
        if not (body.get("meta_info") or {}).get("input_token_logprobs"):
            log.info("%s returned no prompt logprobs; using the chat fallback", url)
            return "chat"
        return "generate"

    async def _check_chat_template(self, server: Server) -> None:
        """In chat mode the server renders the conversation with its chat template: refuse to score
        unless its prompt for a probe conversation has as many tokens as our own rendering (LMDeploy
        silently falls back to a plain ``base`` template when a checkpoint has none)."""
        turns = self.fmt.conversation("What is 1 + 1?", ["1 + 1 = 2.", "The answer is 2."], 0)[:-1]
        ours = self.fmt.template.render(turns, IMAGE_TOKEN) + self.fmt.template.header("assistant")
        enc = await self._http.request("POST", f"{server.url}/v1/encode", {"input": ours, "add_bos": True})
        body = await self._http.request(
            "POST",
            f"{server.url}/v1/chat/completions",
            {"model": server.model, "messages": chat_messages(turns, []), "max_tokens": 1, "temperature": 1.0},
        )
        served = (body.get("usage") or {}).get("prompt_tokens")
        if served != enc["length"]:
            raise ValueError(
                f"{server.url} renders the PRM conversation into {served} prompt tokens, the PRM's chat template "
                f"into {enc['length']}: the server does not use the PRM's chat template, so chat-mode scores would "
                "be out of distribution. Likely cause: the checkpoint has no chat template and LMDeploy fell back "
                "to its 'base' template, or --chat-template names the wrong one. Start the server with "
                "--chat-template pointing at the PRM's template (see the README), or serve it with the PyTorch "
                "engine and --logprobs-mode raw_logprobs so the plugin renders the prompt itself (/generate)."
            )

    # -- scoring -------------------------------------------------------------------------------

    def score(
        self, question: str, images: Sequence[str], candidates: Sequence[Sequence[str]], mode: str = "step"
    ) -> list[StepScores]:
        steps_list, results = prepare(candidates, mode)
        todo = [i for i, r in enumerate(results) if r is None]
        try:
            # read, base64- and JSON-encoded once per sample; every request splices them in as they are
            urls = [RawJSON(json.dumps(image_data_url(p))) for p in images]
        except ValueError as exc:
            return [r or failed(steps_list[i], str(exc)) for i, r in enumerate(results)]
        scored = self._loop.run(self._score_all(question, urls, [steps_list[i] for i in todo]))
        for i, res in zip(todo, scored):
            results[i] = res
        return results  # type: ignore[return-value]

    async def _score_all(self, question: str, urls: list[str], jobs: list[list[str]]) -> list[StepScores]:
        if not jobs:
            return []
        if self.mode == "chat":
            return await asyncio.gather(*(self._score_chat(question, urls, steps) for steps in jobs))
        start = await self._rows_start(question, urls, jobs[0]) if self.skip_prefix_rows else 0
        return await asyncio.gather(*(self._score_generate(question, urls, steps, start) for steps in jobs))

    def _prompt(self, question: str, n_images: int, steps: list[str]) -> str:
        return self.fmt.render(question, steps, n_images, image=IMAGE_TOKEN + "\n")

    async def _rows_start(self, question: str, urls: list[str], steps: list[str]) -> int:
        """``logprob_start_len`` that skips the prefix every candidate shares (system turn, images,
        question). Its length after image expansion is known only to the server, so ask: a /generate
        request for the prefix alone answers with ``prompt_tokens``. It only saves rows: if it
        fails, rows start at 0 and each candidate's own request meets whatever is wrong.
        """
        payload = {"prompt": self.fmt.prompt_head(question, len(urls), IMAGE_TOKEN + "\n"), "max_tokens": 1}
        if urls:
            payload["image_data"] = urls
        try:
            reply = await self.pool.request("POST", "/generate", payload)
            return max(0, int(reply.body["meta_info"]["prompt_tokens"]) - PREFIX_MARGIN)
        except (RequestFailed, KeyError, TypeError, ValueError) as exc:
            log.warning("could not measure the shared prompt prefix (%s); asking for every prompt row", exc)
            return 0

    async def _score_generate(self, question: str, urls: list[str], steps: list[str], start: int) -> StepScores:
        payload = {
            "prompt": self._prompt(question, len(urls), steps),
            "max_tokens": 0,
            "return_logprob": True,
            "top_logprobs_num": self.top_logprobs,
            "logprob_start_len": start,
            "stream": True,
        }
        if urls:
            payload["image_data"] = urls
        try:  # the stream is decoded and reduced to the step values in one step (see AsyncJSONClient.send)
            reply = await self.pool.request(
                "POST", "/generate", payload, events=True, reduce=functools.partial(_read_rows, n_steps=len(steps))
            )
        except RequestFailed as exc:
            return failed(steps, str(exc), transient=exc.retryable)
        if isinstance(reply.body, str):
            return failed(steps, reply.body)
        values, prompt_tokens, n_rows = reply.body
        return self._result(
            steps,
            values,
            {
                "server": reply.server.url,
                "requests": 1,
                "moved": reply.moved,
                "prompt_tokens": prompt_tokens,
                "logprob_rows": n_rows,
            },
            self.top_logprobs,
        )

    async def _score_chat(self, question: str, urls: list[str], steps: list[str]) -> StepScores:
        k = self.top_logprobs
        turns = self.fmt.conversation(question, steps, len(urls))
        # the conversation up to each step's user turn; the server adds the assistant header
        calls = [
            self._chat_step(chat_messages(turns[: len(turns) - 2 * (len(steps) - i) + 1], urls), k)
            for i in range(len(steps))
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for i, out in enumerate(outcomes):
            if isinstance(out, BaseException):
                if not isinstance(out, RequestFailed):
                    raise out
                return failed(steps, f"step {i + 1}: {out}", transient=out.retryable)
        tokens = [t for _, t, _ in outcomes]
        meta = {
            "servers": [r.server.url for _, _, r in outcomes],
            "requests": len(steps),
            "moved": sum(r.moved for _, _, r in outcomes),
            "prompt_tokens": sum(tokens) if all(t is not None for t in tokens) else None,
        }
        return self._result(steps, [v for v, _, _ in outcomes], meta, k)

    async def _chat_step(self, messages: list[dict], k: int):
        # ignore_eos: LMDeploy drops a sampled stop token together with its logprobs row
        payload = {
            "model": self._model,
            "messages": messages,
            "max_tokens": 1,
            "logprobs": True,
            "top_logprobs": k,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "ignore_eos": True,
        }
        reply = await self.pool.request("POST", "/v1/chat/completions", payload)
        try:
            entry = reply.body["choices"][0]["logprobs"]["content"][0]
        except (KeyError, IndexError, TypeError):
            raise RequestFailed(
                f"{reply.server.url} returned no logprobs for the step; start it with "
                "--logprobs-mode raw_logprobs (PyTorch) or use TurboMind"
            ) from None
        reported, cutoff = merge_chat_logprobs(entry, k)
        value = two_way(reported.get(self.fmt.good_token), reported.get(self.fmt.bad_token), cutoff)
        return value, (reply.body.get("usage") or {}).get("prompt_tokens"), reply

    def _result(self, steps: list[str], values: list, meta: dict, k: int) -> StepScores:
        meta = {"mode": self.mode, **meta}
        missing = [i + 1 for i, v in enumerate(values) if v is None]
        if missing:
            return StepScores(
                steps=steps,
                scores=None,
                meta=meta,
                error=(
                    f"steps {missing}: neither {self.fmt.good_token!r} nor {self.fmt.bad_token!r} is among the "
                    f"top {k} logprobs, so P(+) is unknown"
                ),
            )
        bounds = [b for _, b in values]
        if any(bounds):
            meta["bounded_steps"] = sum(b is not None for b in bounds)
        return StepScores(steps=steps, scores=[v for v, _ in values], bounds=bounds if any(bounds) else None, meta=meta)

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return

        async def shutdown():
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self.pool.aclose()
            await self._http.aclose()

        self._loop.run(shutdown())
        self._loop.close()
