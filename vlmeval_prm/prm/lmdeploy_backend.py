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

Either way P(+) = 1 / (1 + exp(lp(-) - lp(+))), the two-way softmax of the logits. When one label is
missing from the top-k its logprob is only known to be at most the k-th largest; that gives a bound
on P(+), recorded in ``StepScores.bounds`` ("lower"/"upper") and ``meta``, never a made-up value.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import math
import mimetypes
import os
from collections.abc import Sequence
from dataclasses import dataclass

from vlmeval_prm.logs import get_logger
from vlmeval_prm.prm.base import PRMScorer, StepScores, failed, prepare
from vlmeval_prm.prm.conversation import PRMFormat, build_messages, first_user_text
from vlmeval_prm.prm.http import AsyncJSONClient, LoopThread, RequestFailed

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


@dataclass(frozen=True)
class ChatMarkers:
    """How the PRM's chat template frames a turn, for /generate prompts rendered by the client.

    Defaults are ChatML as in InternVL2.5 / VisualPRM (and the tiny test model):
    ``<|im_start|>{role}\\n{content}<|im_end|>\\n``. ``image`` stands where the HF template puts
    an image; LMDeploy expands ``<IMAGE_TOKEN>`` to ``<img>`` + image tokens + ``</img>``.
    """

    turn_start: str = "<|im_start|>"
    role_end: str = "\n"
    turn_end: str = "<|im_end|>\n"
    image: str = IMAGE_TOKEN + "\n"

    def header(self, role: str) -> str:
        return f"{self.turn_start}{role}{self.role_end}"

    def render(self, messages: list[dict]) -> str:
        """The prompt for ``build_messages`` output (HF-style content parts)."""
        out = []
        for m in messages:
            body = "".join(self.image if p["type"] == "image" else p["text"] for p in m["content"])
            out.append(f"{self.header(m['role'])}{body}{self.turn_end}")
        return "".join(out)


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


@dataclass
class _Server:
    """What the client learned about one api_server when it started."""

    url: str
    model: str
    mode: str
    pattern: list[int]  # token ids of the assistant header followed by the "+" label
    bad_id: int


class LMDeployPRM(PRMScorer):
    """PRMScorer over one or more LMDeploy api_servers (``target``: URLs separated by commas).

    Candidates are spread round-robin over the servers; all must serve the same model, and the
    mode is one they all support. ``mode``: "auto" (probe), "generate" or "chat".
    ``top_logprobs``: k per row (default 5 for generate, 20, the most allowed, for chat).
    ``concurrency``: requests in flight in all. ``timeout``/``connect_timeout``: seconds per
    attempt; ``max_retries``/``backoff``: retries of connection errors, timeouts, 499 and 5xx.
    ``startup_timeout``: how long to wait for ``/health`` while a server loads. ``chat_markers``:
    ``ChatMarkers`` fields for a PRM whose template is not ChatML. The API key comes from
    ``api_key`` or ``LMDEPLOY_API_KEY``; it is sent as a Bearer token and kept nowhere else.
    """

    def __init__(self, target: str, system_prompt: str | None = PRMFormat.system_prompt,
                 mode: str = "auto", top_logprobs: int | None = None, concurrency: int = 32, timeout: float = 120.0,
                 connect_timeout: float = 10.0, max_retries: int = 3, backoff: float = 0.5,
                 startup_timeout: float = 600.0, api_key: str | None = None, chat_markers: dict | None = None,
                 skip_prefix_rows: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if top_logprobs is not None and top_logprobs < 1:
            raise ValueError(f"top_logprobs must be >= 1, got {top_logprobs}")
        self.urls = [u.strip().rstrip("/") for u in target.split(",") if u.strip()]
        if not self.urls:
            raise ValueError(f"no server URL in {target!r}")
        self.fmt = PRMFormat(system_prompt=system_prompt)
        self.markers = ChatMarkers(**(chat_markers or {}))
        self.skip_prefix_rows = skip_prefix_rows
        self._loop = LoopThread()
        key = api_key or os.environ.get("LMDEPLOY_API_KEY") or None

        async def make_client():  # built on the loop that will use it
            return AsyncJSONClient(api_key=key, timeout=timeout, connect_timeout=connect_timeout,
                                   max_retries=max_retries, backoff=backoff, concurrency=concurrency)

        self._http = self._loop.run(make_client())
        self._turn = itertools.count()
        try:
            self.servers = [self._loop.run(self._connect(url, mode, startup_timeout)) for url in self.urls]
        except BaseException:
            self.close()
            raise
        models = {s.model for s in self.servers}
        if len(models) > 1:
            self.close()
            raise ValueError(f"the servers serve different models: {sorted(models)}")
        self.mode = "generate" if all(s.mode == "generate" for s in self.servers) else "chat"
        for s in self.servers:
            s.mode = self.mode
        default_k = GENERATE_TOP_LOGPROBS if self.mode == "generate" else CHAT_MAX_TOP_LOGPROBS
        self.top_logprobs = top_logprobs or default_k
        if self.mode == "chat":
            self.top_logprobs = min(self.top_logprobs, CHAT_MAX_TOP_LOGPROBS)
        self.identity = f"lmdeploy:{self.servers[0].model}@{self.mode}"
        log.info("LMDeploy PRM %s: %d server(s), %s", self.identity, len(self.servers),
                 "one /generate request per candidate (prompt logprobs)" if self.mode == "generate"
                 else "fallback: one /v1/chat/completions request per step")

    def __repr__(self) -> str:
        return f"LMDeployPRM(urls={self.urls!r}, mode={getattr(self, 'mode', None)!r})"

    @property
    def requests_sent(self) -> int:
        """HTTP requests sent so far, retries and start-up probes included."""
        return self._http.sent

    # -- start-up ------------------------------------------------------------------------------

    async def _connect(self, url: str, mode: str, startup_timeout: float) -> _Server:
        await self._http.wait_healthy(url, startup_timeout)
        try:
            models = await self._http.request("GET", f"{url}/v1/models")
        except RequestFailed as exc:
            if exc.status == 401:
                raise RequestFailed(f"{exc}; check the api_key option or LMDEPLOY_API_KEY", 401) from None
            raise
        model = models["data"][0]["id"]
        good, bad = self.fmt.good_token, self.fmt.bad_token
        header = self.markers.header("assistant")
        enc = await self._http.request("POST", f"{url}/v1/encode",
                                       {"input": [good, bad, header + good], "add_bos": False})
        ids = enc["input_ids"]
        for label, label_ids in ((good, ids[0]), (bad, ids[1])):
            if len(label_ids) != 1:
                raise ValueError(f"{url}: the PRM tokenizer splits {label!r} into {len(label_ids)} tokens; "
                                 "a one-token label is required")
        pattern = ids[2]
        if pattern[-1:] != ids[0]:
            raise ValueError(f"{url}: {good!r} does not stay one token after the assistant header {header!r}")
        if mode == "auto":
            mode = await self._probe(url, header + good)
        return _Server(url=url, model=model, mode=mode, pattern=pattern, bad_id=ids[1][0])

    async def _probe(self, url: str, prompt: str) -> str:
        """"generate" if /generate returns prompt logprobs, else "chat" (server's reason logged)."""
        payload = {"prompt": prompt, "max_tokens": 0, "return_logprob": True, "top_logprobs_num": 1,
                   "logprob_start_len": 0}
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

    # -- scoring -------------------------------------------------------------------------------

    def score(self, question: str, images: Sequence[str], candidates: Sequence[Sequence[str]],
              mode: str = "step") -> list[StepScores]:
        steps_list, results = prepare(candidates, mode)
        todo = [i for i, r in enumerate(results) if r is None]
        try:
            urls = [image_data_url(p) for p in images]
        except ValueError as exc:
            return [r or failed(steps_list[i], str(exc)) for i, r in enumerate(results)]
        jobs = [(i, self.servers[next(self._turn) % len(self.servers)]) for i in todo]
        scored = self._loop.run(self._score_all(question, urls, [(steps_list[i], s) for i, s in jobs]))
        for (i, _), res in zip(jobs, scored):
            results[i] = res
        return results  # type: ignore[return-value]

    async def _score_all(self, question: str, urls: list[str], jobs: list[tuple[list[str], _Server]]):
        if not jobs:
            return []
        if self.mode == "chat":
            return await asyncio.gather(*(self._score_chat(server, question, urls, steps) for steps, server in jobs))
        start = await self._rows_start(jobs[0][1], question, urls, jobs[0][0]) if self.skip_prefix_rows else 0
        return await asyncio.gather(*(self._score_generate(server, question, urls, steps, start)
                                      for steps, server in jobs))

    def _prompt(self, question: str, n_images: int, steps: list[str]) -> str:
        return self.markers.render(build_messages(question, steps, n_images, self.fmt))

    async def _rows_start(self, server: _Server, question: str, urls: list[str], steps: list[str]) -> int:
        """``logprob_start_len`` that skips the prefix every candidate shares (system turn, images).

        Its length after image expansion is known only to the server, so ask: a /generate request
        for the prefix alone answers with ``prompt_tokens``. It only saves rows: if it fails, rows
        start at 0 and each candidate's own request meets whatever is wrong.
        """
        prompt = self._prompt(question, len(urls), steps)
        prefix = prompt[:prompt.index(first_user_text(question, steps[0]))]
        payload = {"prompt": prefix, "max_tokens": 1}
        if urls:
            payload["image_data"] = urls
        try:
            body = await self._http.request("POST", f"{server.url}/generate", payload)
            return max(0, int(body["meta_info"]["prompt_tokens"]) - PREFIX_MARGIN)
        except (RequestFailed, KeyError, TypeError, ValueError) as exc:
            log.warning("could not measure the shared prompt prefix (%s); asking for every prompt row", exc)
            return 0

    async def _score_generate(self, server: _Server, question: str, urls: list[str], steps: list[str],
                              start: int) -> StepScores:
        payload = {"prompt": self._prompt(question, len(urls), steps), "max_tokens": 0, "return_logprob": True,
                   "top_logprobs_num": self.top_logprobs, "logprob_start_len": start, "stream": True}
        if urls:
            payload["image_data"] = urls
        try:
            events = await self._http.request("POST", f"{server.url}/generate", payload, events=True)
        except RequestFailed as exc:
            return failed(steps, str(exc))
        # LMDeploy 0.18 sends the prompt rows once, on the last event; gather them in order regardless
        metas = [e.get("meta_info") or {} for e in events]
        rows = [r for m in metas for r in m.get("input_token_logprobs") or []]
        tops = [t for m in metas for t in m.get("input_top_logprobs") or []]
        meta = metas[-1] if metas else {}
        if not rows or len(tops) != len(rows):
            return failed(steps, f"{server.url} returned no prompt logprobs; start it with the PyTorch "
                                 "engine and --logprobs-mode raw_logprobs")
        targets = [tok for _, tok in rows]  # row j: the distribution that predicts targets[j]
        n = len(server.pattern)
        places = [j + n - 1 for j in range(len(targets) - n + 1) if targets[j:j + n] == server.pattern]
        if len(places) != len(steps):
            return failed(steps, f"found {len(places)} score placeholders for {len(steps)} steps")
        values = []
        for j in places:
            top = {tok: lp for lp, tok in tops[j]}
            values.append(two_way(rows[j][0], top.get(server.bad_id), min(top.values())))
        return self._result(steps, values, server, 1, meta.get("prompt_tokens"), self.top_logprobs,
                            rows=len(rows))

    def _chat_messages(self, question: str, urls: list[str], steps: list[str]) -> list[dict]:
        """OpenAI-format conversation up to the last step's user turn (the server adds the header)."""
        out = []
        for m in build_messages(question, steps, len(urls), self.fmt)[:-1]:
            parts = m["content"]
            if any(p["type"] == "image" for p in parts):
                images = iter(urls)
                content = [{"type": "image_url", "image_url": {"url": next(images)}} if p["type"] == "image"
                           else {"type": "text", "text": p["text"]} for p in parts]
            else:
                content = "".join(p["text"] for p in parts)
            out.append({"role": m["role"], "content": content})
        return out

    async def _score_chat(self, server: _Server, question: str, urls: list[str], steps: list[str]) -> StepScores:
        k = self.top_logprobs
        calls = [self._chat_step(server, self._chat_messages(question, urls, steps[:i + 1]), k)
                 for i in range(len(steps))]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for i, out in enumerate(outcomes):
            if isinstance(out, BaseException):
                if not isinstance(out, RequestFailed):
                    raise out
                return failed(steps, f"step {i + 1}: {out}")
        values = [value for value, _ in outcomes]
        tokens = [t for _, t in outcomes]
        prompt_tokens = sum(tokens) if all(t is not None for t in tokens) else None
        return self._result(steps, values, server, len(steps), prompt_tokens, k)

    async def _chat_step(self, server: _Server, messages: list[dict], k: int):
        # ignore_eos: LMDeploy drops a sampled stop token together with its logprobs row
        payload = {"model": server.model, "messages": messages, "max_tokens": 1, "logprobs": True,
                   "top_logprobs": k, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                   "repetition_penalty": 1.0, "ignore_eos": True}
        body = await self._http.request("POST", f"{server.url}/v1/chat/completions", payload)
        try:
            entry = body["choices"][0]["logprobs"]["content"][0]
        except (KeyError, IndexError, TypeError):
            raise RequestFailed(f"{server.url} returned no logprobs for the step; start it with "
                                "--logprobs-mode raw_logprobs (PyTorch) or use TurboMind") from None
        reported, cutoff = merge_chat_logprobs(entry, k)
        value = two_way(reported.get(self.fmt.good_token), reported.get(self.fmt.bad_token), cutoff)
        return value, (body.get("usage") or {}).get("prompt_tokens")

    def _result(self, steps: list[str], values: list, server: _Server, requests: int,
                prompt_tokens: int | None, k: int, rows: int | None = None) -> StepScores:
        meta = {"mode": self.mode, "server": server.url, "requests": requests, "prompt_tokens": prompt_tokens}
        if rows is not None:
            meta["logprob_rows"] = rows
        missing = [i + 1 for i, v in enumerate(values) if v is None]
        if missing:
            return StepScores(steps=steps, scores=None, meta=meta, error=(
                f"steps {missing}: neither {self.fmt.good_token!r} nor {self.fmt.bad_token!r} is among the "
                f"top {k} logprobs, so P(+) is unknown"))
        bounds = [b for _, b in values]
        if any(bounds):
            meta["bounded_steps"] = sum(b is not None for b in bounds)
        return StepScores(steps=steps, scores=[v for v, _ in values], bounds=bounds if any(bounds) else None,
                          meta=meta)

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return
        self._loop.run(self._http.aclose())
        self._loop.close()
