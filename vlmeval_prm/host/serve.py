"""``vlmeval-prm serve``: a Best-of-N model behind an OpenAI-compatible HTTP API.

Why: OpenCompass evaluates models it can call (its ``OpenAISDK`` model), and other clients (another
machine's VLMEvalKit ``GPT4V``/``LMDeployAPI``, a notebook, an app) speak the same protocol. The answer is
the chosen candidate in ``choices[0].message.content``; a top-level ``bon`` object adds every candidate
with its scores, and ``usage`` counts the candidates' tokens where the base model has a tokenizer
(``UsageCounter``). A malformed request gets a 400 that names what is wrong and where in the
request. Every request's candidates go to the candidate store, which doubles as a cache: an
identical request (same text, same image bytes) is answered from it without sampling again.

The port opens at once and the model loads in the background: ``/health`` and chat requests answer 503
until it is ready (LMDeploy keeps its port closed instead; a client that waits on ``/health`` works with
both). A model that fails to load stops the server with exit code 1.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import json
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse
from urllib.request import url2pathname

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlmeval_prm.constants import DEMO_ENV, STORE_DIR_ENV
from vlmeval_prm.loading import message_parts
from vlmeval_prm.logs import get_logger
from vlmeval_prm.prm import backend_class
from vlmeval_prm.store.records import Summary

log = get_logger(__name__)

#: The server's API key when ``--api-key`` is not given (documented in the README).
API_KEY_ENV = "VLMEVAL_PRM_API_KEY"
#: Candidates per question when ``--model`` names a base model rather than a ``-BoN<N>`` name.
DEFAULT_N = 8
#: Largest image accepted in a request (decoded bytes).
MAX_IMAGE_BYTES = 32 << 20
#: Timeout for fetching an http(s) image (``--allow-remote-images``).
FETCH_TIMEOUT_S = 30.0


@dataclass
class ServeOptions:
    """What ``vlmeval-prm serve`` was asked to serve, checked before anything is loaded."""

    model: str | None = None
    config: str | None = None
    n: int | None = None
    prm: str | None = None
    demo: bool = False  # the tiny demo names and PRM (``model`` names the demo model)
    store_dir: str | None = None
    max_concurrency: int = 8
    api_key: str | None = field(default=None, repr=False)
    allow_remote_images: bool = False
    image_root: str | None = None
    vlmevalkit_root: str | None = None  # whose run.py builds a --config model (default: the installed host)

    def check(self) -> None:
        """ValueError naming the bad option; run before the (slow) model load."""
        if not (self.model or self.config):
            raise ValueError("name a model (--model), a --config file, or use --demo")
        if self.demo and self.config:
            raise ValueError("--demo serves the tiny demo model: drop --config")
        if self.config:
            if self.n is not None or self.prm:
                raise ValueError("--n/--prm do not combine with --config: set them in the config file")
            with open(self.config, encoding="utf-8") as f:
                models = json.load(f).get("model")
            if not isinstance(models, dict) or not models:
                raise ValueError(f'{self.config} has no "model" section')
            if self.model is None and len(models) != 1:
                raise ValueError(f"{self.config} defines {sorted(models)}: choose one with --model")
            if self.model is not None and self.model not in models:
                raise ValueError(f"{self.config} has no model {self.model!r} (it has {sorted(models)})")
            from vlmeval_prm.host.runner import find_host

            find_host(self.vlmevalkit_root)  # HostNotFound before the model load
        if self.n is not None and self.n < 1:
            raise ValueError(f"--n must be >= 1, got {self.n}")
        if self.max_concurrency < 1:
            raise ValueError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")
        if self.image_root and not os.path.isdir(self.image_root):
            raise ValueError(f"--image-root {self.image_root} is not a folder")


# ------------------------------------------------------------------------------------------- errors


class APIError(Exception):
    """An HTTP error with OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.extra = extra or {}

    def body(self) -> dict:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code},
            **self.extra,
        }


#: JSON's names for Python values, for messages about what a request holds.
JSON_KINDS = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


def _kind(value) -> str:
    return "null" if value is None else JSON_KINDS.get(type(value), type(value).__name__)


def request_loc(loc, body) -> str:
    """A pydantic error location as a path into the request (``messages.0.content``): pydantic also
    puts the names of union members into it (``content.str``, ``image_url.ImageURL``); those are not in
    the request and are dropped. A missing key stays, as the last element."""
    path, cur = [], body
    items = [x for x in loc if x != "body"] if loc and loc[0] == "body" else list(loc)
    for i, item in enumerate(items):
        if isinstance(cur, dict) and item in cur:
            cur = cur[item]
        elif isinstance(cur, list) and isinstance(item, int) and 0 <= item < len(cur):
            cur = cur[item]
        elif i == len(items) - 1 and isinstance(cur, dict) and isinstance(item, str):
            pass  # a missing key: keep it
        else:
            continue  # a union member's name
        path.append(str(item))
    return ".".join(path)


def json_error_message(doc, pos: int, reason: str) -> str:
    """``json.JSONDecodeError``'s wording, with line and column counted from 1."""
    text = doc.decode("utf-8", "replace") if isinstance(doc, bytes) else str(doc or "")
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return f"the request body is not valid JSON: {reason} at line {line}, column {column} (character {pos})"


# ------------------------------------------------------------------------------------ model loading


def load_model(opts: ServeOptions):
    """The ``BestOfN`` to serve: a ``-BoN<N>`` name, a base name wrapped in Best-of-``--n``, or a
    ``--config`` entry (built by VLMEvalKit's own ``build_model_from_config``)."""
    if opts.store_dir:
        os.environ[STORE_DIR_ENV] = opts.store_dir  # read by run_context.store_path at every request
    if opts.demo:
        os.environ[DEMO_ENV] = "1"  # the tiny names register only with it, when vlmeval.config loads
    from vlmeval.config import supported_VLM

    from vlmeval_prm.host import plugin
    from vlmeval_prm.host.bon import BestOfN

    if opts.config:
        from vlmeval_prm.host.runner import build_model_from_config, find_host

        with open(opts.config, encoding="utf-8") as f:
            models = json.load(f)["model"]
        name = opts.model or next(iter(models))
        entry = dict(models[name])
        if entry.get("class") == "BestOfN":
            entry.setdefault("name", name)  # served (and stored) under its config name, as vlmeval.run does
        host = find_host(opts.vlmevalkit_root)
        log.info(
            "building %s from %s with VLMEvalKit's build_model_from_config (%s)", name, opts.config, host.describe()
        )
        model = build_model_from_config({name: entry}, name, host)
    else:
        name = opts.model
        prm = plugin.TINY_PRM_SPEC if opts.demo else opts.prm
        if name not in supported_VLM:
            why = plugin.name_problem(name, supported_VLM)  # ours: which case, and what to do
            raise LookupError(
                f"{name!r} is not in VLMEvalKit's supported_VLM"
                + (f": {why}" if why else " (nor a -BoN<N> name of one)")
            )
        factory = supported_VLM[name]
        if getattr(factory, "func", None) is plugin.BestOfN:  # a registered -BoN<N> name: N is in the name
            if opts.n is not None and opts.n != factory.keywords.get("n"):
                raise ValueError(f"{name} fixes N={factory.keywords.get('n')}; drop --n or serve the base model")
            model = factory(**({"prm": prm} if prm else {}))
        else:
            n = opts.n or DEFAULT_N
            model = BestOfN(model=name, n=n, prm=prm, name=plugin.bon_name(name, n))
    if not isinstance(model, BestOfN):
        raise TypeError(f"serve needs a Best-of-N model; {type(model).__name__} is not BestOfN")
    return model


def bon_payload(model, out: dict) -> dict:
    """The ``bon`` object: every candidate (text, response score, steps, step scores, error) and the
    selected index, from ``generate``'s summary and the candidate store (the one place that reads it)."""
    summary = Summary.from_json(out["extra_records"])
    entry = model.store(None).get(summary.key)
    candidates = []
    for i, score in enumerate(summary.scores):
        cand = entry.candidate(i, summary.sampling)
        rec = entry.score(i, summary.prm, "step", summary.sampling, summary.scorer)
        error = (cand.error if cand is not None else "not sampled") or (rec.error if rec is not None else None)
        candidates.append(
            {
                "index": i,
                "text": entry.text(i, summary.sampling),
                "score": score,
                "steps": rec.steps if rec is not None else None,
                "step_scores": _finite(rec.step_scores) if rec is not None else None,
                "error": error,
            }
        )
    return {
        "selected": summary.chosen,
        "n": summary.n,
        "prm": summary.prm,
        "aggregate": summary.aggregate,
        "failures": summary.failures,
        "candidates": candidates,
    }


def _finite(values: list[float] | None) -> list[float | None] | None:
    """JSON has no NaN: a non-finite step score (an unscored candidate) goes out as null."""
    return None if values is None else [v if math.isfinite(v) else None for v in values]


# -------------------------------------------------------------------------------------------- usage


def find_tokenizer(base) -> tuple[Any, str] | tuple[None, None]:
    """The base model's own tokenizer and where it sits (``tokenizer`` or ``processor.tokenizer``, as
    TransformersChat and VLMEvalKit's local wrappers keep it); (None, None) for API models."""
    for path in ("tokenizer", "processor.tokenizer"):
        obj = base
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
        if callable(getattr(obj, "encode", None)):
            return obj, path
    return None, None


class UsageCounter:
    """The OpenAI ``usage`` object of a response, for the N candidates the answer was chosen from.

    No policy reports token counts (VLMEvalKit's wrappers return text only; its API wrappers drop the
    server's ``usage``), so they are counted here with the base model's own tokenizer, without special
    tokens: ``completion_tokens`` is the sum over the candidates' texts; ``prompt_tokens`` is the text
    the policy is sent (the question and the step prompt) times the number of candidates that produced
    text. The chat template and image tokens are not counted (the policy adds them its own way), nor is
    the PRM's scoring. A policy without a local tokenizer (an API model) gets ``usage: null``: no
    numbers rather than made-up ones. ``bon.usage_counted_by`` says which applies. The counts describe
    the candidates behind the answer, also when they come from the store rather than fresh sampling.
    """

    def __init__(self, model):
        self.model = model
        self.tokenizer, where = find_tokenizer(model.base)
        base = type(model.base).__name__
        self.method = (
            f"the tokenizer of {model.base_name} ({base}.{where}); text only: chat template and image "
            "tokens are not counted"
            if self.tokenizer is not None
            else f"not counted: {model.base_name} ({base}) has no local tokenizer and reports no token counts"
        )

    def tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def usage(self, message: list[dict], bon: dict) -> dict | None:
        if self.tokenizer is None:
            return None
        texts = [c["text"] for c in bon["candidates"] if c["text"] is not None]
        prompt = self.tokens(message_parts(self.model.prompt_message(message))[0]) * len(texts)
        completion = sum(self.tokens(t) for t in texts)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class ModelHost:
    """Loads the model in a thread and runs ``generate`` calls on a bounded pool: ``max_concurrency``
    workers when policy and PRM are both served (API calls), else one (VLMEvalKit's local wrappers and
    an in-process PRM are not thread-safe)."""

    def __init__(self, opts: ServeOptions):
        self.opts = opts
        self.model = None
        self.error: str | None = None
        self.image_dir: str | None = None
        self.counter: UsageCounter | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def name(self) -> str:
        return self.model.name if self.model is not None else (self.opts.model or "loading")

    def load(self, on_failure: Callable[[], None]) -> None:
        started = time.monotonic()
        try:
            model = load_model(self.opts)
        except Exception as exc:
            log.exception("could not load the model to serve")
            self.error = f"{type(exc).__name__}: {exc}"
            on_failure()
            return
        parallel = model.is_api and backend_class(model.prm_spec).concurrent
        workers = self.opts.max_concurrency if parallel else 1
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="bon-generate")
        self.image_dir = os.path.join(os.path.dirname(os.path.abspath(model.store(None).path)), "images")
        self.counter = UsageCounter(model)
        self.model = model
        log.info(
            "%s ready in %.1f s (N=%d, PRM %s; %s); candidate store %s",
            model.name,
            time.monotonic() - started,
            model.n,
            model.prm_spec,
            f"up to {workers} requests at once" if parallel else "a local model: one request at a time",
            model.store(None).path,
        )

    async def generate(self, message: list[dict]) -> tuple[str, dict, dict | None]:
        """The answer, the ``bon`` object and the ``usage`` object (None when tokens are not counted)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._generate, message)

    def _generate(self, message: list[dict]) -> tuple[str, dict, dict | None]:
        from vlmeval_prm.host.bon import PolicyFailure

        try:
            out = self.model.generate(message, None)
        except PolicyFailure as exc:  # every candidate failed the same permanent way: say why, not a bare 500
            raise APIError(500, str(exc), type="server_error", code="policy_failed") from None
        bon = bon_payload(self.model, out)
        bon["usage_counted_by"] = self.counter.method
        return out["prediction"], bon, self.counter.usage(message, bon)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------------------------- request schema


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL | str


#: The content part types a request may hold (OpenAI's names).
PART_TYPES = ("text", "image_url")


class Message(BaseModel):
    """``content``: a string or a list of parts; the parts are checked one by one in ``parse_part``, so
    that an error names the part and what is wrong with it."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = None

    @field_validator("content")
    @classmethod
    def _string_or_parts(cls, value):
        if value is None or isinstance(value, (str, list)):
            return value
        raise ValueError(f"must be a string or a list of content parts ({', '.join(PART_TYPES)}), got {_kind(value)}")


class ChatRequest(BaseModel):
    """A chat completion request. Sampling fields (temperature, max_tokens, ...) are accepted and
    ignored: Best-of-N samples with the settings the server was started with."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    n: int | None = None
    stream: bool | None = None


# ------------------------------------------------------------------------------------------- images


async def image_bytes(url: str, opts: ServeOptions, where: str = "image_url") -> bytes:
    """The bytes behind an image URL: a base64 data URL always; http(s) only with
    ``--allow-remote-images``; ``file://`` only inside ``--image-root``. ``where``: the part's path in
    the request (``messages.0.content.1.image_url``), named in every error."""
    scheme = urlparse(url).scheme.lower()
    if scheme == "data":
        header, sep, payload = url.partition(",")
        if not sep or not header.lower().endswith(";base64"):
            raise APIError(400, f"{where}: an image data URL must be base64: data:image/png;base64,...", param=where)
        if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise APIError(400, f"{where}: image larger than {MAX_IMAGE_BYTES} bytes", param=where)
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error as exc:
            raise APIError(400, f"{where}: image data URL is not valid base64: {exc}", param=where) from exc
    if scheme in ("http", "https"):
        if not opts.allow_remote_images:
            raise APIError(
                400,
                f"{where}: http(s) image URLs are off on this server (start it with --allow-remote-images); "
                "send the image as a base64 data URL",
                param=where,
            )
        try:
            async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=True) as client:
                resp = await client.get(url)
                resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise APIError(400, f"{where}: could not fetch the image: {exc}", param=where) from exc
        return resp.content
    if scheme == "file":
        if not opts.image_root:
            raise APIError(
                400, f"{where}: file:// image URLs are off on this server (start it with --image-root DIR)", param=where
            )
        root = os.path.realpath(opts.image_root)
        path = os.path.realpath(url2pathname(urlparse(url).path))
        if os.path.commonpath([root, path]) != root:
            raise APIError(400, f"{where}: file:// image URL outside --image-root", param=where)
        try:
            with open(path, "rb") as f:
                return f.read(MAX_IMAGE_BYTES + 1)
        except OSError as exc:
            raise APIError(400, f"{where}: could not read the image file: {exc.strerror}", param=where) from exc
    raise APIError(
        400, f"{where}: unsupported image URL scheme {scheme or url[:16]!r}: use a base64 data URL", param=where
    )


#: An object's default repr (``<_io.BytesIO object at 0x7f...>``), which Pillow puts in its messages.
OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def save_image(data: bytes, folder: str, where: str = "image_url") -> str:
    """Check that ``data`` is an image and keep it as ``<folder>/<sha256>.<format>``: named by content, so
    the same image in another request is the same sample in the store."""
    if len(data) > MAX_IMAGE_BYTES:
        raise APIError(400, f"{where}: image larger than {MAX_IMAGE_BYTES} bytes", param=where)
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "png").lower()
            im.verify()
    except UnidentifiedImageError as exc:
        raise APIError(
            400,
            f"{where}: the data ({len(data)} bytes) is not a readable image: Pillow recognises no image "
            "format in it; send PNG, JPEG, GIF, BMP or WebP",
            param=where,
        ) from exc
    except Image.DecompressionBombError as exc:
        raise APIError(400, f"{where}: the image has too many pixels ({exc})", param=where) from exc
    except Exception as exc:
        reason = OBJECT_REPR.sub("", str(exc)).strip() or type(exc).__name__
        raise APIError(
            400, f"{where}: the data ({len(data)} bytes) is not a readable image: it is damaged ({reason})", param=where
        ) from exc
    path = os.path.join(folder, f"{hashlib.sha256(data).hexdigest()}.{fmt}")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def parse_part(part, where: str) -> TextPart | ImagePart:
    """One content part, checked: an object with a known ``type`` and that type's fields. Errors name
    the part (``where``: ``messages.0.content.1``) and, for an unknown type, the ones allowed."""
    allowed = " and ".join(PART_TYPES)
    if not isinstance(part, dict):
        raise APIError(
            400, f"{where} is {_kind(part)}: a content part is an object with a type ({allowed})", param=where
        )
    kind = part.get("type")
    if kind not in PART_TYPES:
        if "type" not in part:
            what = "has no type"
        elif isinstance(kind, str):
            what = f"has type {kind[:40]!r}, which this server does not accept"
        else:
            what = f"has a type that is {_kind(kind)}"
        raise APIError(
            400, f"{where} {what}: content parts may be of type {allowed}", param=f"{where}.type", code="invalid_type"
        )
    schema = TextPart if kind == "text" else ImagePart
    try:
        return schema.model_validate(part)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(filter(None, [where, request_loc(first["loc"], part)]))
        msg = first["msg"]
        if loc == f"{where}.image_url":  # missing, or neither an object nor a string
            got = f"got {_kind(part['image_url'])}" if "image_url" in part else "it is missing"
            msg = f'an image_url part holds "image_url": {{"url": "data:image/png;base64,..."}}; {got}'
        raise APIError(400, f"{loc}: {msg}", param=loc) from None


async def to_vlmeval_message(request, opts: ServeOptions, image_dir: str) -> list[dict]:
    """One user turn -> VLMEvalKit's message list ``[{"type": "text"|"image", "value": ...}]``, in order."""
    if request.stream:
        raise APIError(400, "streaming is not supported", param="stream")
    if request.n not in (None, 1):
        raise APIError(
            400,
            "n must be 1: the answer is the best of the server's N candidates, all of which "
            "come back in `bon.candidates`",
            param="n",
        )
    if len(request.messages) != 1 or request.messages[0].role != "user":
        raise APIError(
            400,
            "send exactly one user message: Best-of-N answers a single question "
            f"(got roles {[m.role for m in request.messages]})",
            param="messages",
        )
    content = request.messages[0].content
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    message = []
    for i, raw in enumerate(content or []):
        where = f"messages.0.content.{i}"
        part = parse_part(raw, where)
        if isinstance(part, TextPart):
            if part.text.strip():
                message.append({"type": "text", "value": part.text})
            continue
        url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
        data = await image_bytes(url, opts, f"{where}.image_url")
        message.append({"type": "image", "value": save_image(data, image_dir, f"{where}.image_url")})
    if not message:
        raise APIError(400, "the user message has no text and no image", param="messages")
    return message


# -------------------------------------------------------------------------------------------- app


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's request validation error as one clear 400: invalid JSON with its line and column, a
    body that is not a JSON object, or the first invalid field, named by its path in the request."""
    first = exc.errors()[0] if exc.errors() else {}
    kind, loc = first.get("type"), tuple(first.get("loc", ()))
    if kind == "json_invalid":
        pos = loc[-1] if loc and isinstance(loc[-1], int) else 0
        reason = (first.get("ctx") or {}).get("error") or "JSON decode error"
        return APIError(400, json_error_message(exc.body, pos, reason), code="invalid_json")
    path = request_loc(loc, exc.body)
    if not path:
        if kind == "missing":
            got = "no body"
        elif isinstance(exc.body, (bytes, str)):  # not read as JSON: another Content-Type
            got = "a body that was not read as JSON"
        else:
            got = _kind(exc.body)
        return APIError(
            400,
            f"the request body must be a JSON object with model and messages, got {got} "
            "(send it with Content-Type: application/json)",
        )
    msg = str(first.get("msg") or "invalid value")
    msg = msg.removeprefix("Value error, ")
    return APIError(400, f"{path}: {msg}", param=path)


def create_app(host: ModelHost):
    """The FastAPI app: ``/health``, ``/v1/models``, ``/v1/chat/completions``."""
    app = FastAPI(title="vlmeval-prm Best-of-N", docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError):
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError):
        return JSONResponse(validation_error(exc).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """FastAPI's own errors (an unknown path, a wrong method, a body it cannot read), in OpenAI's body."""
        if exc.status_code in (404, 405):
            message = (
                f"{request.method} {request.url.path} is not an endpoint of this server "
                "(it has GET /health, GET /v1/models and POST /v1/chat/completions)"
            )
        else:
            message = str(exc.detail)
        error = APIError(
            exc.status_code, message, type="invalid_request_error" if exc.status_code < 500 else "server_error"
        )
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    def authorize(request: Request) -> None:
        key = host.opts.api_key
        if not key:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise APIError(401, "invalid or missing API key (Authorization: Bearer ...)", code="invalid_api_key")

    def ready_model():
        if host.model is None:
            raise APIError(
                503,
                f"the model is {'not available: ' + host.error if host.error else 'loading'}",
                type="service_unavailable",
            )
        return host.model

    @app.get("/health")
    async def health():
        ready_model()
        return {"status": "ok", "model": host.name}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        return {
            "object": "list",
            "data": [{"id": host.name, "object": "model", "created": 0, "owned_by": "vlmeval-prm"}],
        }

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat(request: ChatRequest):
        model = ready_model()
        if request.model != model.name:
            raise APIError(
                404,
                f"model {request.model!r} is not served here; this server serves {model.name!r}",
                param="model",
                code="model_not_found",
            )
        message = await to_vlmeval_message(request, host.opts, host.image_dir)
        try:
            answer, bon, usage = await host.generate(message)
        except Exception as exc:
            log.exception("Best-of-N failed for a request")
            raise APIError(500, f"Best-of-N failed: {type(exc).__name__}: {exc}", type="server_error") from exc
        if bon["selected"] is None:
            raise APIError(
                502,
                f"no candidate could be scored ({bon['failures']}); the failures are in the "
                "candidate store and a retry resumes them",
                type="server_error",
                extra={"bon": bon},
            )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": usage,  # see UsageCounter: null where tokens cannot be counted
            "bon": bon,
        }

    return app


def _bind(host: str, port: int) -> socket.socket:
    family, type_, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(2048)  # connections queue from now on, before uvicorn's loop starts accepting
    return sock


def serve(opts: ServeOptions, host: str = "127.0.0.1", port: int = 8000) -> int:
    """Run the server until interrupted; 1 when the model could not be loaded."""
    import uvicorn

    opts.check()
    model_host = ModelHost(opts)
    server = uvicorn.Server(uvicorn.Config(create_app(model_host), log_level="info"))

    def stop() -> None:
        server.should_exit = True

    sock = _bind(host, port)
    bound = sock.getsockname()
    log.info(
        "listening on http://%s:%d (the model loads in the background; /health is 200 once it is ready)",
        host if ":" not in host else f"[{host}]",
        bound[1],
    )
    threading.Thread(target=model_host.load, args=(stop,), name="bon-load", daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn shut down gracefully, then re-raised Ctrl-C
    finally:
        model_host.close()
        sock.close()
    return 1 if model_host.error else 0
