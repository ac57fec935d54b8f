"""``vlmeval-prm serve --demo``: the real ``openai`` client against the served tiny Best-of-N (CPU, offline).

The server runs as its own process, as a user starts it; the candidate store it writes is read back
with the store's own reader. Request checks that need no model run in-process on the same app.
"""

import asyncio
import base64
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest
from commands import HOST, checkout_of_installed
from openai import BadRequestError, NotFoundError, OpenAI
from PIL import Image, ImageDraw
from transformers import AutoTokenizer

from vlmeval_prm.host.plugin import TINY_PRM_SPEC
from vlmeval_prm.host.serve import APIError, ServeOptions, UsageCounter, image_bytes, save_image
from vlmeval_prm.select.aggregate import response_score
from vlmeval_prm.store.jsonl import index_records, read_records

MODEL, N = "VLMEvalPRM-TinyPolicy-BoN4", 4
KEY = "sk-test-4f1c2b9e"  # must never show in the server's output or files


def png_bytes(color: str, shape: str = "circle") -> bytes:
    im = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(im)
    (draw.ellipse if shape == "circle" else draw.rectangle)((12, 12, 52, 52), fill=color)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def question(text: str, image: bytes) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": text}],
        }
    ]


def start_server(tmp_path, *args, env=None):
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmeval_prm.host.cli", "serve", "--port", "0", *args],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+:\d+)", (tmp_path / "server.log").read_text())
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    pytest.fail("server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])


def wait_ready(proc, url, log_path, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited:\n" + log_path.read_text()[-3000:]
        if httpx.get(f"{url}/health").status_code == 200:
            return
        time.sleep(0.5)
    pytest.fail("server not ready:\n" + log_path.read_text()[-3000:])


def stop(proc) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_paths):
    """The demo server with an API key from the environment; the first requests hit it while it loads."""
    tmp = tmp_path_factory.mktemp("serve")
    proc, url = start_server(
        tmp,
        "--demo",
        "--store-dir",
        str(tmp / "store"),
        env={"VLMEVAL_PRM_API_KEY": KEY, "LMUData": str(tmp / "LMUData")},
    )
    auth = {"Authorization": f"Bearer {KEY}"}
    # vlmeval alone takes seconds to import: these land while the model loads
    loading = [
        httpx.get(f"{url}/health"),
        httpx.post(
            f"{url}/v1/chat/completions",
            headers=auth,
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        ),
    ]
    try:
        wait_ready(proc, url, tmp / "server.log")
        yield {
            "proc": proc,
            "url": url,
            "tmp": tmp,
            "auth": auth,
            "loading": loading,
            "client": OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0),
        }
    finally:
        stop(proc)


def store_entries(server):
    path = server["tmp"] / "store" / f"{MODEL}_nodataset_bon_candidates.jsonl"
    return path, index_records(read_records(str(path)))


def test_503_with_an_error_body_while_loading(server):
    health, chat = server["loading"]
    assert health.status_code == 503 and chat.status_code == 503
    assert chat.json()["error"]["type"] == "service_unavailable" and "loading" in chat.json()["error"]["message"]
    assert chat.headers["retry-after"]


def test_openai_client_gets_the_best_candidate_and_all_scores_for_an_image_question(server, tiny_paths):
    client = server["client"]
    assert [m.id for m in client.models.list()] == [MODEL]
    image = png_bytes("red")
    resp = client.chat.completions.create(model=MODEL, messages=question("Which colour is the circle?", image))
    answer = resp.choices[0].message.content
    bon = resp.model_extra["bon"]
    assert resp.model == MODEL and bon["n"] == N and bon["prm"] == TINY_PRM_SPEC
    cands = bon["candidates"]
    assert [c["index"] for c in cands] == list(range(N))
    scored = [c for c in cands if c["score"] is not None]
    assert scored, bon
    for c in scored:
        assert len(c["step_scores"]) == len(c["steps"]) >= 1
        assert all(0.0 <= s <= 1.0 for s in c["step_scores"])
        assert c["score"] == pytest.approx(response_score(c["step_scores"], bon["aggregate"]))
    selected = cands[bon["selected"]]  # the best score (a tie is drawn among the best)
    assert selected["score"] == max(c["score"] for c in scored) and answer == selected["text"] and answer

    # usage: the N candidates, counted with the tiny policy's own tokenizer (text only)
    tokenizer = AutoTokenizer.from_pretrained(tiny_paths["policy"])
    texts = [c["text"] for c in cands if c["text"] is not None]
    completion = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)
    question_tokens = len(tokenizer.encode("Which colour is the circle?", add_special_tokens=False))
    usage = resp.usage
    assert usage.completion_tokens == completion > 0
    assert (
        usage.prompt_tokens % len(texts) == 0 and usage.prompt_tokens // len(texts) > question_tokens
    )  # + step prompt
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert bon["usage_counted_by"].startswith("the tokenizer of VLMEvalPRM-TinyPolicy (TransformersChat.tokenizer)")

    # every candidate is in the store, and the stored image is the one sent
    _, entries = store_entries(server)
    (entry,) = [e for e in entries.values() if e.sample and "Which colour" in e.sample.question]
    assert [entry.text(i) for i in range(N)] == [c["text"] for c in cands]
    (stored_image,) = entry.sample.images
    with open(stored_image, "rb") as f:
        assert f.read() == image


def test_identical_request_is_answered_from_the_store(server):
    client, msgs = server["client"], question("How many circles are there?", png_bytes("blue"))
    first = client.chat.completions.create(model=MODEL, messages=msgs)
    path, _ = store_entries(server)
    lines = path.read_text().count("\n")
    again = client.chat.completions.create(model=MODEL, messages=msgs)
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.model_extra["bon"] == first.model_extra["bon"]
    assert path.read_text().count("\n") == lines  # nothing sampled or scored again


def test_concurrent_requests_all_succeed_and_are_stored(server):
    client = server["client"]
    texts = [f"Question {i}: what shape is shown?" for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        resps = list(
            pool.map(
                lambda t: client.chat.completions.create(
                    model=MODEL, messages=question(t, png_bytes("green", "square"))
                ),
                texts,
            )
        )
    _, entries = store_entries(server)
    for text, resp in zip(texts, resps):
        (entry,) = [e for e in entries.values() if e.sample and text in e.sample.question]
        assert sorted(entry.candidates) == list(range(N))
        assert resp.choices[0].message.content == entry.text(resp.model_extra["bon"]["selected"])


def image_request(url: str, text: str | None = None) -> dict:
    parts = [{"type": "text", "text": text}] if text else []
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": [*parts, {"type": "image_url", "image_url": {"url": url}}]}],
    }


NOT_AN_IMAGE = "data:image/png;base64," + base64.b64encode(b"no image").decode()
CUT_PNG = "data:image/png;base64," + base64.b64encode(png_bytes("red")[:-30]).decode()


@pytest.mark.parametrize(
    "body, param, says",
    [
        ({"model": MODEL, "messages": []}, "messages", "messages: List should have at least 1 item"),
        ({"model": MODEL}, "messages", "messages: Field required"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "audio", "x": 1}]}]},
            "messages.0.content.0.type",
            "messages.0.content.0 has type 'audio', which this server does not accept: content parts may be of "
            "type text and image_url",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"text": "hi"}]}]},
            "messages.0.content.0.type",
            "messages.0.content.0 has no type",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": 7}]},
            "messages.0.content",
            "must be a string or a list of content parts (text, image_url), got a number",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content.0.image_url",
            'an image_url part holds "image_url": {"url": "data:image/png;base64,..."}; it is missing',
        ),
        (
            image_request("data:image/png;base64,@@@"),
            "messages.0.content.0.image_url",
            "messages.0.content.0.image_url: image data URL is not valid base64",
        ),
        (
            image_request(NOT_AN_IMAGE, text="What is this?"),
            "messages.0.content.1.image_url",
            "messages.0.content.1.image_url: the data (8 bytes) is not a readable image",
        ),
        (
            image_request(CUT_PNG),
            "messages.0.content.0.image_url",
            "is not a readable image: it is damaged",
        ),
        (image_request("https://example.com/a.png"), "messages.0.content.0.image_url", "--allow-remote-images"),
        (image_request("file:///etc/passwd"), "messages.0.content.0.image_url", "--image-root"),
        (
            {
                "model": MODEL,
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            },
            "messages",
            "send exactly one user message",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}, "stream", "streaming"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 3}, "n", "n must be 1"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "   "}]}, "messages", "no text and no image"),
    ],
)
def test_malformed_requests_get_400_with_an_openai_error_body(server, body, param, says):
    resp = httpx.post(f"{server['url']}/v1/chat/completions", headers=server["auth"], json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert says in error["message"], error
    assert not re.search(r"object at 0x|<[A-Za-z_.]+ ", error["message"]), error  # no Python object reprs


def test_malformed_json_and_the_openai_client_get_400(server):
    resp = httpx.post(
        f"{server['url']}/v1/chat/completions",
        content=b'{"model": "x",\n "messages": [}',
        headers={**server["auth"], "Content-Type": "application/json"},
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error == {
        "message": "the request body is not valid JSON: Expecting value at line 2, column 15 (character 29)",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_json",
    }
    resp = httpx.post(
        f"{server['url']}/v1/chat/completions",
        content=b"[1]",
        headers={**server["auth"], "Content-Type": "application/json"},
    )
    assert resp.status_code == 400 and "must be a JSON object with model and messages, got an array" in resp.text
    with pytest.raises(BadRequestError) as exc:
        server["client"].chat.completions.create(model=MODEL, messages=[])
    assert exc.value.status_code == 400 and exc.value.body["type"] == "invalid_request_error"


def test_unknown_endpoint_gets_an_openai_error_body(server):
    resp = httpx.post(f"{server['url']}/v1/completions", headers=server["auth"], json={"model": MODEL, "prompt": "hi"})
    assert resp.status_code == 404
    assert "POST /v1/completions is not an endpoint of this server" in resp.json()["error"]["message"]


def test_unknown_model_is_404(server):
    with pytest.raises(NotFoundError) as exc:
        server["client"].chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["code"] == "model_not_found"


def test_api_key_is_required_and_never_written(server):
    url, body = server["url"], {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 401
    wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/health").status_code == 200  # probes need no key
    for path in server["tmp"].rglob("*"):
        if path.is_file() and path.suffix not in (".png",):
            assert KEY not in path.read_text(errors="ignore"), path


def test_unknown_model_name_stops_the_server_with_a_clear_error(tmp_path):
    proc, _ = start_server(tmp_path, "--model", "NoSuchModel-BoN4")
    try:
        assert proc.wait(timeout=300) == 1
    finally:
        stop(proc)
    log = (tmp_path / "server.log").read_text()
    assert "'NoSuchModel-BoN4' is not in VLMEvalKit's supported_VLM" in log
    assert "'NoSuchModel' is not a model" in log and "`vlmeval-prm models`" in log  # the plugin's diagnosis


@pytest.mark.parametrize("root", [False, True], ids=["installed-host", "checkout-root"])
def test_a_config_entry_is_served_under_its_name(tmp_path, tiny_paths, root):
    """Built by the host's own build_model_from_config: the installed one, or that of the checkout
    ``--vlmevalkit-root`` names (its run.py, loaded as a module)."""
    cfg = tmp_path / "bon.json"
    cfg.write_text(
        json.dumps(
            {"model": {"MyBoN": {"class": "BestOfN", "model": "VLMEvalPRM-TinyPolicy", "n": 2, "prm": TINY_PRM_SPEC}}}
        )
    )
    extra = ["--vlmevalkit-root", str(checkout_of_installed(tmp_path / "checkout"))] if root else []
    proc, url = start_server(
        tmp_path, "--config", str(cfg), "--store-dir", str(tmp_path / "store"), *extra, env={"VLMEVAL_PRM_DEMO": "1"}
    )  # the tiny policy's name exists only with it
    try:
        wait_ready(proc, url, tmp_path / "server.log")
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["MyBoN"]
        resp = client.chat.completions.create(model="MyBoN", messages=question("Name the shape.", png_bytes("red")))
        assert len(resp.model_extra["bon"]["candidates"]) == 2
        assert (tmp_path / "store" / "MyBoN_nodataset_bon_candidates.jsonl").exists()
    finally:
        assert stop(proc) == 0
    host = f"python {tmp_path / 'checkout' / 'run.py'}" if root else HOST.describe()
    assert f"build_model_from_config ({host})" in (tmp_path / "server.log").read_text()


# ------------------------------------------------------------------- request checks without a model


def test_options_are_checked_before_loading(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"a": {"class": "BestOfN", "model": "x"}, "b": {"class": "BestOfN"}}}))
    with pytest.raises(ValueError, match="choose one with --model"):
        ServeOptions(config=str(cfg)).check()
    with pytest.raises(ValueError, match="has no model 'c'"):
        ServeOptions(model="c", config=str(cfg)).check()
    with pytest.raises(ValueError, match="do not combine with --config"):
        ServeOptions(model="a", config=str(cfg), n=4).check()
    with pytest.raises(ValueError, match="name a model"):
        ServeOptions().check()
    ServeOptions(model="a", config=str(cfg)).check()
    assert KEY not in repr(ServeOptions(model="m", api_key=KEY))


def test_file_urls_only_inside_the_image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.png").write_bytes(png_bytes("red"))
    (tmp_path / "secret.png").write_bytes(png_bytes("blue"))
    opts = ServeOptions(model="m", image_root=str(root))
    assert asyncio.run(image_bytes((root / "a.png").as_uri(), opts)) == png_bytes("red")
    for url in ((tmp_path / "secret.png").as_uri(), (root / ".." / "secret.png").as_uri()):
        with pytest.raises(APIError, match="outside --image-root"):
            asyncio.run(image_bytes(url, opts))


def test_saved_images_are_named_by_content(tmp_path):
    a = save_image(png_bytes("red"), str(tmp_path))
    assert save_image(png_bytes("red"), str(tmp_path)) == a
    assert save_image(png_bytes("blue"), str(tmp_path)) != a
    assert os.path.basename(a) == hashlib.sha256(png_bytes("red")).hexdigest() + ".png"


def test_usage_is_null_when_the_policy_has_no_tokenizer():
    """An API policy: VLMEvalKit's wrappers drop the server's counts and there is no local tokenizer."""

    class GPT4V:  # the shape of an API wrapper: no tokenizer, no processor
        pass

    counter = UsageCounter(SimpleNamespace(base=GPT4V(), base_name="GPT4o"))
    assert counter.usage([{"type": "text", "value": "hi"}], {"candidates": [{"text": "a"}]}) is None
    assert counter.method.startswith("not counted: GPT4o (GPT4V) has no local tokenizer")


def test_undecodable_image_errors_name_the_part_without_reprs(tmp_path):
    with pytest.raises(APIError) as exc:
        save_image(b"GIF89a" + b"\0" * 4, str(tmp_path), "messages.0.content.2.image_url")
    assert exc.value.param == "messages.0.content.2.image_url"
    assert exc.value.message.startswith("messages.0.content.2.image_url: the data (10 bytes) is not a readable image")
    assert "0x" not in exc.value.message and "<" not in exc.value.message


def test_a_policy_that_cannot_answer_is_a_500_that_says_why():
    """BestOfN stops a policy whose every candidate fails the same permanent way (``PolicyFailure``, a
    SystemExit for vlmeval.run); the server answers that request with the reason, and keeps serving."""
    from vlmeval_prm.host.bon import PolicyFailure
    from vlmeval_prm.host.serve import APIError, ModelHost, ServeOptions

    class Broken:
        def generate(self, message, dataset):
            raise PolicyFailure("every candidate failed: HTTPStatusError: 401 Unauthorized")

    host = ModelHost(ServeOptions(model="x"))
    host.model = Broken()
    with pytest.raises(APIError) as info:
        host._generate([{"type": "text", "value": "Q?"}])
    assert info.value.status == 500 and "401 Unauthorized" in str(info.value)
