"""The served-PRM client's request bodies and response decoding: images encoded once per sample and
spliced into every request as they are, bodies that decode to what httpx's ``json=`` would send, and
the garbage collector left as it was found. The server is LMDeploy 0.18's own api_server around the
CPU stand-in engine (``standins.lmdeploy_standin``)."""

import gc
import json

import pytest
from PIL import Image

pytest.importorskip("lmdeploy")

from standins.lmdeploy_standin import serve_standin  # noqa: E402
from vlmeval_prm.prm import lmdeploy_backend  # noqa: E402
from vlmeval_prm.prm.http import RawJSON, encode_json, gc_paused  # noqa: E402
from vlmeval_prm.prm.lmdeploy_backend import LMDeployPRM, image_data_url  # noqa: E402

PAYLOAD = {
    "prompt": 'Ünïcode ∑ "quoted"\n<IMAGE_TOKEN>',
    "max_tokens": 0,
    "return_logprob": True,
    "top_logprobs_num": 5,
    "temperature": 1.0,
    "stop": None,
    "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
}


def httpx_body(value) -> bytes:
    """What httpx's ``json=`` sends (httpx/_content.py ``encode_json``)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def test_bodies_match_httpx_and_raw_json_is_spliced_as_is():
    assert encode_json(PAYLOAD) == httpx_body(PAYLOAD)
    urls = ["data:image/png;base64,AAAA", "data:image/jpeg;base64,/9j/"]
    spliced = {
        **PAYLOAD,
        "image_data": [RawJSON(json.dumps(u)) for u in urls],
        "nested": {"url": RawJSON(json.dumps(urls[0]))},
    }
    assert encode_json(spliced) == httpx_body({**PAYLOAD, "image_data": urls, "nested": {"url": urls[0]}})
    with pytest.raises(ValueError):
        encode_json({"x": float("nan")})  # as httpx refuses it


def test_the_collector_is_left_as_it_was():
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # the caller had it off: it stays off
    finally:
        gc.enable()


@pytest.mark.parametrize("mode", ["generate", "chat"])
def test_each_image_is_encoded_once_per_sample_and_sent_once_per_request(tiny_paths, tmp_path, monkeypatch, mode):
    images = []
    for name, size in (("a.png", (90, 70)), ("b.png", (40, 64))):
        Image.new("RGB", size, (200, 30, 30)).save(tmp_path / name)
        images.append(str(tmp_path / name))
    encoded = []
    monkeypatch.setattr(lmdeploy_backend, "image_data_url", lambda p: encoded.append(p) or image_data_url(p))
    candidates = [["one.", "two."], ["three."], ["four.", "five.", "six."]]
    with serve_standin(tiny_paths["prm"], record_bodies=True) as server:
        prm = LMDeployPRM(server.url, mode=mode)
        try:
            server.stats.bodies.clear()
            results = prm.score("How many?", images, candidates)
        finally:
            prm.close()
    assert all(r.scores is not None or "top" in (r.error or "") for r in results)
    assert sorted(encoded) == sorted(images)  # once per image for the whole sample
    urls = [image_data_url(p) for p in images]
    bodies = [body for _, body in server.stats.bodies]
    assert len(bodies) == (len(candidates) if mode == "generate" else sum(map(len, candidates)))
    for body in bodies:
        if mode == "generate":
            assert body["image_data"] == urls
        else:
            parts = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]]
            assert [p["image_url"]["url"] for p in parts if p["type"] == "image_url"] == urls


def test_the_replaying_stand_in_answers_a_repeated_request_without_the_engine(tiny_paths):
    """bench_lmdeploy.py's client-only server: the same body gets the recorded answer, engine untouched."""
    candidates = [["one.", "two."], ["three."]]
    with serve_standin(tiny_paths["prm"], replay=True) as server:
        prm = LMDeployPRM(server.url, mode="generate")
        try:
            first = prm.score("How many?", [], candidates)
            calls = server.stats.engine_calls
            again = prm.score("How many?", [], candidates)
            assert server.stats.engine_calls == calls  # replayed
            other = prm.score("How many circles?", [], candidates)
            assert server.stats.engine_calls == calls + len(candidates)  # a new body reaches the engine
        finally:
            prm.close()
    assert [r.scores for r in again] == [r.scores for r in first] and all(r.ok for r in first + other)
