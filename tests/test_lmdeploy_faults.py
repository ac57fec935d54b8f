"""Faults between the LMDeploy PRM client and LMDeploy's api_server: each ends in a retry that
succeeds or a recorded failure with a clear message, never a score; the API key never shows.

The server is LMDeploy 0.18's own app around a CPU stand-in engine (no GPU here); faults are
injected in front of it (``standins.lmdeploy_standin.Faults``), so error bodies are
LMDeploy's.
"""

import logging
import socket
import time

import pytest
from PIL import Image

pytest.importorskip("lmdeploy")

from standins.lmdeploy_standin import serve_standin  # noqa: E402
from vlmeval_prm.prm.http import RequestFailed  # noqa: E402
from vlmeval_prm.prm.lmdeploy_backend import LMDeployPRM  # noqa: E402

KEY = "sk-test-9f8e7d6c5b4a"
QUESTION = "What is the area?"
ONE = [["The side is 3.", "So the area is 9."]]
FAST = {"backoff": 0.01, "max_retries": 2, "api_key": KEY}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "square.png"
    Image.new("RGB", (64, 64), (0, 90, 0)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def server(tiny_paths):
    with serve_standin(tiny_paths["prm"], model_name="tiny-prm", api_keys=[KEY]) as srv:
        yield srv


@pytest.fixture
def prm(server):
    server.faults.clear()
    client = LMDeployPRM(server.url, **FAST)
    yield client
    client.close()
    server.faults.clear()


@pytest.fixture(scope="module")
def baseline(server, image):
    client = LMDeployPRM(server.url, **FAST)
    try:
        return client.score(QUESTION, [image], ONE)[0]
    finally:
        client.close()


@pytest.mark.parametrize("fault", [("fail", 500), ("fail", 503), ("fail", 499), ("drop", None)])
def test_transient_faults_are_retried_until_the_score_comes(prm, server, image, baseline, fault, caplog):
    kind, status = fault
    server.faults.fail_next(2, status) if kind == "fail" else server.faults.drop_next(2)
    before = server.stats.requests["/generate"]
    with caplog.at_level(logging.WARNING, logger="vlmeval.vlmeval_prm"):
        res = prm.score(QUESTION, [image], ONE)[0]
    assert res.ok and res.scores == pytest.approx(baseline.scores, abs=1e-9)
    assert server.stats.requests["/generate"] - before == 3
    assert "retry 2/2" in caplog.text


def test_a_fault_that_outlasts_the_retries_is_a_recorded_failure(prm, server, image):
    server.faults.fail_next(3, 503)
    res = prm.score(QUESTION, [image], ONE)[0]
    assert res.scores is None and not res.ok
    assert "HTTP 503" in res.error and "The inference engine is unavailable." in res.error


def test_a_bad_request_is_not_retried(prm, server, image):
    server.faults.fail_next(1, 400)
    before = server.stats.requests["/generate"]
    res = prm.score(QUESTION, [image], ONE)[0]
    assert res.scores is None and "HTTP 400" in res.error
    assert server.stats.requests["/generate"] - before == 1


def test_a_slow_response_times_out_and_is_retried(server, image, baseline):
    server.faults.clear()
    client = LMDeployPRM(server.url, timeout=0.5, **FAST)
    try:
        server.faults.slow_next(1, 1.5)
        res = client.score(QUESTION, [image], ONE)[0]
        assert res.ok and res.scores == pytest.approx(baseline.scores, abs=1e-9)
        server.faults.slow_next(3, 1.5)
        res = client.score(QUESTION, [image], ONE)[0]
        assert res.scores is None and "timed out" in res.error
    finally:
        client.close()
        server.faults.clear()


def test_a_server_still_loading_is_waited_for(tiny_paths, image, caplog):
    caplog.set_level(logging.INFO, logger="vlmeval.vlmeval_prm")
    with serve_standin(tiny_paths["prm"], model_name="late", start_delay=1.5) as server:
        start = time.monotonic()
        client = LMDeployPRM(server.url, startup_timeout=60, backoff=0.01)
        try:
            assert time.monotonic() - start > 1.0
            assert client.score(QUESTION, [image], ONE)[0].ok
        finally:
            client.close()
    waits = [r.getMessage() for r in caplog.records if "waiting for the LMDeploy server" in r.getMessage()]
    assert len(waits) == 1 and server.url in waits[0] and "cannot connect" in waits[0]  # one line per 30 s
    assert "is up" in caplog.text


def test_a_server_that_never_comes_up_is_a_clear_error():
    with socket.socket() as sock:  # bound, not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(RuntimeError, match=r"not healthy after 1s: cannot connect"):
            LMDeployPRM(url, startup_timeout=1)


def test_context_length_overflow_is_a_recorded_failure(tiny_paths, image):
    long = [f"Step {i}: the side is {i} and the area is {i * i}, so we go on. " * 3 for i in range(12)]
    # the system turn alone is about 700 tokens of the tiny tokenizer
    with serve_standin(tiny_paths["prm"], model_name="short", session_len=1000) as server:
        for mode in ("generate", "chat"):
            client = LMDeployPRM(server.url, mode=mode, backoff=0.01)
            try:
                fits, too_long = client.score(QUESTION, [image], [ONE[0], long])
            finally:
                client.close()
            # the plain tiny PRM's labels are outside the chat top 20, so there "fits" is unscored too
            assert fits.ok if mode == "generate" else "context length" not in fits.error
            assert too_long.scores is None and "HTTP 400" in too_long.error
            assert "must be smaller than the model context length (1000)" in too_long.error
        assert server.stats.requests["/generate"] == 2  # one per candidate (mode given: no probe), no retries


def test_a_wrong_key_is_refused_at_once_and_never_shown(server, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-0a1b2c3d"
    before = server.stats.requests["/v1/models"]
    with pytest.raises(RequestFailed, match=r"HTTP 401 \(authentication_error: Unauthorized.\)") as err:
        LMDeployPRM(server.url, api_key=wrong, backoff=0.01)
    assert server.stats.requests["/v1/models"] - before == 1
    assert wrong not in str(err.value) and wrong not in caplog.text


def test_the_key_from_the_environment_is_used_but_never_shown(server, image, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("LMDEPLOY_API_KEY", KEY)
    client = LMDeployPRM(server.url, backoff=0.01)
    try:
        res = client.score(QUESTION, [image], ONE)[0]
        shown = [repr(client), str(client), client.identity, repr(vars(client)), str(res.to_record()), caplog.text]
    finally:
        client.close()
    assert res.ok
    assert not any(KEY in text for text in shown)
