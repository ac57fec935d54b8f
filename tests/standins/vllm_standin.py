"""A CPU stand-in for ``vllm serve <Qwen2.5-Math-PRM>``: vLLM has no CPU build to install here, so this FastAPI
app answers the routes the ``vllm:`` client uses with vLLM 0.34.0's schema (62d4bc3c7):

* ``GET /health`` (200, empty) and ``GET /v1/models``
  (``{"object": "list", "data": [{"id", "object": "model", ...}]}``);
* ``POST /pooling`` with a ``PoolingChatRequest`` (``vllm/entrypoints/pooling/pooling/protocol.py``: ``model``,
  ``messages``, ``task``, ``add_generation_prompt`` false by default, ``add_special_tokens`` false): the messages
  rendered with the checkpoint's chat template, the model's head output at every token, STEP pooling
  (``vllm/model_executor/layers/pooler/tokwise/methods.py`` ``StepPool``: the rows whose prompt token is
  ``step_tag_id``) and the softmax of ``token_classify``; answered as a ``PoolingResponse``
  (``{"id", "object": "list", "created", "model", "data": [{"index", "object": "pooling", "data": [[p0, p1], ...]}],
  "usage"}``). ``task: "encode"`` is a 400, as in 0.34.

* ``POST /v1/chat/completions`` with vLLM's ``prompt_logprobs`` extension and ``return_token_ids``
  (``vllm/entrypoints/openai/chat_completion/protocol.py``): the messages (images as data URLs) rendered by
  the checkpoint's processor with a generation prompt (the default), ``mm_processor_kwargs`` passed to it;
  the response's top-level ``prompt_logprobs`` (``null``, then per prompt token a ``{token id: {logprob, rank,
  decoded_token}}`` with the actual token and the top k) and ``prompt_token_ids``; k above ``max_logprobs``
  (``--max-logprobs``, default 20; -1: the vocabulary) is a 400;
* ``POST /tokenize`` (``{"prompt"}`` or ``{"messages", "add_generation_prompt"}`` -> ``{"count", "max_model_len",
  "tokens"}``).

The pooling model is the stand-in checkpoint of tests/standins/qwen2_rm_remote.py; the chat model any HF-native
image-text-to-text checkpoint (the tiny Qwen2.5-VL of tests/standins/tiny_vlms.py), run with transformers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Seen:
    requests: list[dict] = field(default_factory=list)
    fail_next: int = 0  # answer this many /pooling requests with HTTP 500


def serve_model_routes(app, served_name: str) -> None:
    """``GET /health`` and ``GET /v1/models``, as every vLLM server answers them."""
    from fastapi.responses import JSONResponse

    @app.get("/health")
    def health():
        return JSONResponse(None)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "vllm"}]}


def make_app(checkpoint: str, served_name: str, step_tag: str, seen: Seen):
    import torch
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True, dtype=torch.float32).eval()
    step_tag_id = tokenizer.convert_tokens_to_ids(step_tag)
    app = FastAPI()

    serve_model_routes(app, served_name)

    @app.post("/pooling")
    def pooling(body: dict):
        seen.requests.append(body)
        if seen.fail_next:
            seen.fail_next -= 1
            return JSONResponse({"error": {"message": "engine crashed", "type": "InternalServerError"}}, 500)
        if body.get("task") == "encode":
            message = "The `encode` task was removed; use `token_embed` or `token_classify` instead"
            return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": 400}}, 400)
        text = tokenizer.apply_chat_template(
            body["messages"], tokenize=False, add_generation_prompt=body.get("add_generation_prompt", False)
        )
        ids = tokenizer(text, add_special_tokens=body.get("add_special_tokens", False), return_tensors="pt")[
            "input_ids"
        ]
        with torch.no_grad():
            logits = model(input_ids=ids)[0][0]
        rows = torch.softmax(logits[ids[0] == step_tag_id].float(), dim=-1).tolist()
        n = int(ids.shape[1])
        return {
            "id": f"pool-{len(seen.requests)}",
            "object": "list",
            "created": int(time.time()),
            "model": served_name,
            "data": [{"index": 0, "object": "pooling", "data": rows}],
            "usage": {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0},
        }

    return app


def make_chat_app(checkpoint: str, served_name: str, seen: Seen, max_logprobs: int = 20):
    import base64
    import io

    import torch
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    tokenizer = processor.tokenizer
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    app = FastAPI()

    def hf_messages(messages: list[dict]) -> tuple[list[dict], list]:
        out, images = [], []
        for m in messages:
            parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            content = []
            for part in parts:
                if part["type"] == "image_url":
                    data = part["image_url"]["url"].split(",", 1)[1]
                    images.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
                    content.append({"type": "image"})
                else:
                    content.append({"type": "text", "text": part["text"]})
            out.append({"role": m["role"], "content": content})
        return out, images

    def error(message: str, status: int = 400):
        return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": status}}, status)

    serve_model_routes(app, served_name)

    @app.post("/tokenize")
    def tokenize(body: dict):
        if "messages" in body:
            messages, _ = hf_messages(body["messages"])
            text = processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=body.get("add_generation_prompt", True)
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
        return {"count": len(ids), "max_model_len": 8192, "tokens": ids}

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        seen.requests.append(body)
        if seen.fail_next:
            seen.fail_next -= 1
            return JSONResponse({"error": {"message": "engine crashed", "type": "InternalServerError"}}, 500)
        k = body.get("prompt_logprobs")
        if k is not None and (max_logprobs != -1 and (k == -1 or k > max_logprobs)):
            return error(f"Requested prompt logprobs of {k}, which is greater than max allowed: {max_logprobs}")
        messages, images = hf_messages(body["messages"])
        text = processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=body.get("add_generation_prompt", True)
        )
        kwargs = {"images": [images]} if images else {}
        enc = processor(text=[text], return_tensors="pt", **kwargs, **(body.get("mm_processor_kwargs") or {}))
        with torch.no_grad():
            logits = model(**enc).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        ids = enc["input_ids"][0].tolist()
        rows: list = [None]
        for t in range(1, len(ids)):
            order = torch.argsort(logprobs[t - 1], descending=True).tolist()
            top = order if k == -1 else order[: k or 0]
            entry = {}
            for rank, tid in [(order.index(ids[t]) + 1, ids[t]), *((r + 1, tid) for r, tid in enumerate(top))]:
                lp = float(logprobs[t - 1, tid])
                entry[str(tid)] = {"logprob": lp, "rank": rank, "decoded_token": tokenizer.decode([tid])}
            rows.append(entry)
        answer = tokenizer.decode([int(logits[-1].argmax())])
        return {
            "id": f"chatcmpl-{len(seen.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1},
            "prompt_logprobs": rows if k is not None else None,
            "prompt_token_ids": ids if body.get("return_token_ids") else None,
        }

    return app


@contextlib.contextmanager
def serve_vllm_standin(
    checkpoint: str, served_name: str = "Qwen/Qwen2.5-Math-PRM-7B", chat: bool = False, max_logprobs: int = 20
) -> Iterator[tuple[str, Seen]]:
    """(url, seen) of the stand-in on a free local port, for the ``with`` block: a pooling server, or with
    ``chat`` a chat server of an image-text-to-text checkpoint."""
    import uvicorn

    seen = Seen()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    app = (
        make_chat_app(checkpoint, served_name, seen, max_logprobs)
        if chat
        else make_app(checkpoint, served_name, "<extra_0>", seen)
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the vLLM stand-in did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", seen
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
