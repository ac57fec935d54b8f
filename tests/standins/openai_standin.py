"""OpenAI-compatible chat-completions servers on localhost (port 0: the OS picks a free port).

Both answer ``POST /v1/chat/completions`` with the OpenAI response shape and count the requests
(``chat_calls``); ``url`` is the base address (append ``/v1/chat/completions``).

- ``serve_scripted(reply, model=...)``: ``reply(prompt, payload)`` gives the text of the one choice
  (``prompt``: the text of the last message); None answers HTTP 500, like a failing model. Used as
  the judge model of VLMEvalKit's evaluations.
- ``serve_sampling(honour_n=True)``: a sampling policy: ``n`` choices (1 when absent), each a
  distinct step-by-step reply ending in an option letter; with ``honour_n=False`` one choice whatever
  ``n`` says, like servers that ignore it. Payloads and Authorization headers are recorded.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = "/v1/chat/completions"


def last_text(payload: dict) -> str:
    """The text of the last message (a string, or the text parts of a content list)."""
    messages = payload.get("messages") or [{}]
    content = messages[-1].get("content", "")
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return str(content)


class ChatStandin:
    """The HTTP server; ``answer(payload, auth)`` -> (status, body) is the model."""

    def __init__(self, model: str = "standin"):
        self.model = model
        self.payloads: list[dict] = []
        self.auth: list[str | None] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def chat_calls(self) -> int:
        return len(self.payloads)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def record(self, payload: dict, auth: str | None) -> int:
        with self._lock:
            self.payloads.append(payload)
            self.auth.append(auth)
            return len(self.payloads) - 1

    def answer(self, payload: dict, auth: str | None) -> tuple[int, dict]:
        raise NotImplementedError

    def body(self, request: int, payload: dict, texts: list[str]) -> dict:
        choices = [
            {"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": t}}
            for i, t in enumerate(texts)
        ]
        return {
            "id": f"chatcmpl-{request}",
            "object": "chat.completion",
            "model": payload.get("model", self.model),
            "choices": choices,
            "usage": {"prompt_tokens": 10, "completion_tokens": 20 * len(texts)},
        }

    def start(self) -> ChatStandin:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] != PATH:
                    status, body = 404, {"error": {"message": f"no route {self.path}"}}
                else:
                    raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    try:
                        status, body = standin.answer(json.loads(raw), self.headers.get("Authorization"))
                    except json.JSONDecodeError:
                        status, body = 400, {"error": {"message": "invalid JSON"}}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class ScriptedStandin(ChatStandin):
    def __init__(self, reply: Callable[[str, dict], str | None], model: str = "standin"):
        super().__init__(model)
        self.reply = reply

    def answer(self, payload, auth):
        request = self.record(payload, auth)
        text = self.reply(last_text(payload), payload)
        if text is None:
            return 500, {"error": {"message": "the scripted model failed", "type": "server_error"}}
        return 200, self.body(request, payload, [text])


class SamplingStandin(ChatStandin):
    def __init__(self, honour_n: bool = True, model: str = "standin"):
        super().__init__(model)
        self.honour_n = honour_n

    def reply(self, request: int, choice: int) -> str:
        letter = "ABCD"[(request + choice) % 4]
        return (
            f"Step 1: Read the figure (request {request}, choice {choice}).\n\n"
            f"Step 2: Compare the options; {letter} fits best.\n\nAnswer: {letter}"
        )

    def answer(self, payload, auth):
        request = self.record(payload, auth)
        if not payload.get("messages"):
            return 400, {"error": {"message": "messages is required", "type": "invalid_request_error"}}
        n = int(payload.get("n", 1)) if self.honour_n else 1
        return 200, self.body(request, payload, [self.reply(request, i) for i in range(n)])


class ContinuationStandin(ChatStandin):
    """A vLLM server continuing a final assistant message (``continue_final_message``, vLLM's chat extension):
    ``n`` continuations of the partial answer, each one step (up to and including the blank line, as with
    ``include_stop_str_in_output``) or the final answer at the third step; a request without the extension
    is refused as vLLM refuses a malformed request. Counts every token it reads and writes (one token per
    word here) in ``prompt_tokens`` / ``completion_tokens``, and reports them as ``usage``."""

    def __init__(self, model: str = "standin-policy", delay: float = 0.0):
        super().__init__(model)
        self.prompt_tokens = self.completion_tokens = 0
        self.delay = delay  # seconds per request, like a server under load

    @staticmethod
    def words(text: str) -> int:
        return len(text.split())

    def answer(self, payload, auth):
        request = self.record(payload, auth)
        time.sleep(self.delay)
        messages = payload.get("messages") or []
        if not (payload.get("continue_final_message") and messages and messages[-1]["role"] == "assistant"):
            return 400, {"error": {"message": "continue_final_message needs a final assistant message"}}
        prefix, question = messages[-1]["content"], last_text({"messages": messages[:-1]})
        depth = prefix.count("\n\n") + 1
        texts = []
        for j in range(int(payload.get("n", 1))):
            h = sum(map(ord, f"{prefix}|{j}|{payload.get('seed')}"))
            if depth >= 3:
                texts.append(f"So the answer is {'ABCD'[h % 4]}.")
            else:
                texts.append(f"Step {depth}: look at part {h % 7} of the figure.\n\n")
        with self._lock:
            self.prompt_tokens += self.words(question) + self.words(prefix)
            self.completion_tokens += sum(map(self.words, texts))
        body = self.body(request, payload, texts)
        body["usage"] = {
            "prompt_tokens": self.words(question) + self.words(prefix),
            "completion_tokens": sum(map(self.words, texts)),
        }
        return 200, body


@contextlib.contextmanager
def _serving(server: ChatStandin) -> Iterator[ChatStandin]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def serve_scripted(reply: Callable[[str, dict], str | None], model: str = "standin"):
    return _serving(ScriptedStandin(reply, model))


def serve_sampling(honour_n: bool = True, model: str = "standin"):
    return _serving(SamplingStandin(honour_n, model))


def serve_continuation(model: str = "standin-policy", delay: float = 0.0):
    return _serving(ContinuationStandin(model, delay))


def gpt4v_bon_config(name: str, n: int, server: ChatStandin, key: str, data: str | dict) -> dict:
    """``vlmeval.run --config`` JSON: Best-of-``n`` over VLMEvalKit's GPT4V pointed at ``server``, on ``data``
    (the mini MCQ set's name, or a whole ``data`` section)."""
    return {
        "model": {
            name: {
                "class": "BestOfN",
                "n": n,
                "model": {
                    "class": "GPT4V",
                    "model": "gpt-4o-mini",
                    "api_base": f"{server.url}/v1/chat/completions",
                    "key": key,
                    "retry": 1,
                    "verbose": False,
                },
            }
        },
        "data": data if isinstance(data, dict) else {data: {"class": "VLMEvalPRMMiniMCQ", "dataset": data}},
    }
