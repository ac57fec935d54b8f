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

The model is the stand-in checkpoint of tests/standins/qwen2_rm_remote.py, run with transformers.
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


def make_app(checkpoint: str, served_name: str, step_tag: str, seen: Seen):
    import torch
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True, dtype=torch.float32).eval()
    step_tag_id = tokenizer.convert_tokens_to_ids(step_tag)
    app = FastAPI()

    @app.get("/health")
    def health():
        return JSONResponse(None)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "vllm"}]}

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


@contextlib.contextmanager
def serve_vllm_standin(checkpoint: str, served_name: str = "Qwen/Qwen2.5-Math-PRM-7B") -> Iterator[tuple[str, Seen]]:
    """(url, seen) of the stand-in on a free local port, for the ``with`` block."""
    import uvicorn

    seen = Seen()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(make_app(checkpoint, served_name, "<extra_0>", seen), log_level="warning", lifespan="off")
    )
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
