"""Several PRM servers in one spec (``lmdeploy:http://a,http://b,...``): the client balances requests
itself (least outstanding), health-checks the servers and moves a dead server's in-flight work.

Each server is LMDeploy 0.18's own api_server app around the CPU stand-in engine (no GPU here);
``kill()`` resets its open connections and closes its port, as a crashed server would. Engine
latency per server is injected (``faults.latency``) to hold requests in flight.
"""

import logging
import threading
import time

import pytest
from PIL import Image

pytest.importorskip("lmdeploy")

from standins.lmdeploy_standin import label_boosted_copy, serve_standin  # noqa: E402
from vlmeval_prm.prm import build_scorer  # noqa: E402
from vlmeval_prm.prm.hf_backend import TransformersPRM  # noqa: E402
from vlmeval_prm.tiny import ATTN_IMPLEMENTATION  # noqa: E402

QUESTION = "What is the area of the square?"
CANDIDATES = [[f"The side is {i}.", f"So the area is {i * i}."] for i in range(24)]


@pytest.fixture(scope="module")
def labelled(tiny_paths, tmp_path_factory):
    return label_boosted_copy(tiny_paths["prm"], str(tmp_path_factory.mktemp("labelled")), {"+": 8.0, "-": 8.0})


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "square.png"
    Image.new("RGB", (64, 64), (0, 90, 0)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def reference(labelled, image):
    return TransformersPRM(labelled, attn_implementation=ATTN_IMPLEMENTATION).score(QUESTION, [image], CANDIDATES)


def generate_requests(*servers):
    return [s.stats.requests["/generate"] for s in servers]


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_server_killed_mid_run_loses_no_candidate_and_scores_none_twice(labelled, image, reference, caplog):
    caplog.set_level(logging.INFO)
    with (
        serve_standin(labelled, model_name="prm", latency=0.2) as a,
        serve_standin(labelled, model_name="prm", latency=0.2) as b,
        serve_standin(labelled, model_name="prm", latency=0.2) as c,
    ):
        prm = build_scorer(f"lmdeploy:{a.url},{b.url},{c.url}", backoff=0.01)
        try:
            assert prm.mode == "generate" and len(prm.servers) == 3
            b.faults.latency = 600.0  # b holds whatever it gets until it dies
            before = generate_requests(a, b, c)
            out = {}
            worker = threading.Thread(target=lambda: out.update(res=prm.score(QUESTION, [image], CANDIDATES)))
            worker.start()
            share = len(CANDIDATES) // 3  # least outstanding: all sent at once, so a third each
            wait_for(lambda: generate_requests(b)[0] - before[1] == share)
            time.sleep(0.3)  # they are in b's engine now
            b.kill()
            worker.join(timeout=120)
            assert not worker.is_alive()
            got = out["res"]
        finally:
            prm.close()
        after = generate_requests(a, b, c)

    # every candidate scored, and scored right
    for ref, res in zip(reference, got, strict=True):
        assert res.ok, res.error
        assert res.scores == pytest.approx(ref.scores, abs=1e-4)
    # b's in-flight work moved to a and c; no candidate reached a live server twice
    assert after[1] - before[1] == share
    assert {r.meta["server"] for r in got} == {a.url, c.url}
    assert sum(r.meta["moved"] for r in got) == share
    assert (after[0] - before[0]) + (after[2] - before[2]) == len(CANDIDATES)
    assert f"PRM server {b.url} is down" in caplog.text and f"moving its {share} in-flight requests" in caplog.text


def test_least_outstanding_requests_favours_the_faster_server(labelled, image):
    with serve_standin(labelled, model_name="prm") as fast, serve_standin(labelled, model_name="prm") as slow:
        prm = build_scorer(f"lmdeploy:{fast.url},{slow.url}", concurrency=2)
        try:
            slow.faults.latency = 1.0
            before = generate_requests(fast, slow)
            got = prm.score(QUESTION, [image], CANDIDATES[:12])
        finally:
            prm.close()
        n_fast, n_slow = (x - y for x, y in zip(generate_requests(fast, slow), before))
    assert all(r.ok for r in got)
    assert n_fast + n_slow == 12 and n_slow >= 1
    assert n_fast >= 3 * n_slow  # round-robin would give 6 and 6


def test_a_server_that_comes_up_later_joins(labelled, image, caplog, monkeypatch):
    import vlmeval_prm.prm.lmdeploy_backend as backend

    monkeypatch.setattr(backend, "JOIN_GRACE", 0.5)
    caplog.set_level(logging.INFO)
    with (
        serve_standin(labelled, model_name="prm") as ready,
        serve_standin(labelled, model_name="prm", start_delay=3.0) as late,
    ):
        prm = build_scorer(f"lmdeploy:{ready.url},{late.url}")
        try:
            assert [s.url for s in prm.servers] == [ready.url]
            assert f"PRM server {late.url} is not ready yet" in caplog.text
            wait_for(lambda: len(prm.servers) == 2, timeout=30)
            got = prm.score(QUESTION, [image], CANDIDATES[:6])
        finally:
            prm.close()
    assert all(r.ok for r in got)
    assert {r.meta["server"] for r in got} == {ready.url, late.url}
    assert f"PRM server {late.url} joined" in caplog.text


def test_a_hung_server_is_found_by_the_health_checks_and_its_work_moved(labelled, image, caplog):
    """No connection error here: the open requests just hang. The periodic /health check finds it."""
    caplog.set_level(logging.INFO)
    with serve_standin(labelled, model_name="prm") as a, serve_standin(labelled, model_name="prm") as b:
        prm = build_scorer(f"lmdeploy:{a.url},{b.url}", health_interval=0.5, health_timeout=0.5)
        try:
            b.faults.latency = 600.0
            out = {}
            worker = threading.Thread(target=lambda: out.update(res=prm.score(QUESTION, [image], CANDIDATES[:6])))
            worker.start()
            wait_for(lambda: b.stats.requests["/generate"] >= 3)
            b.hang()
            worker.join(timeout=60)
            assert not worker.is_alive()
        finally:
            prm.close()
    got = out["res"]
    assert all(r.ok for r in got) and {r.meta["server"] for r in got} == {a.url}
    assert sum(r.meta["moved"] for r in got) == 3
    assert f"PRM server {b.url} is down" in caplog.text


def test_a_dead_server_that_comes_back_is_used_again(labelled, image, caplog):
    from urllib.parse import urlsplit

    caplog.set_level(logging.INFO)
    with serve_standin(labelled, model_name="prm") as a:
        with serve_standin(labelled, model_name="prm") as b:
            prm = build_scorer(f"lmdeploy:{a.url},{b.url}", health_interval=0.3, health_timeout=0.5, backoff=0.01)
            b_url = b.url
            b.kill()
        try:
            first = prm.score(QUESTION, [image], CANDIDATES[:4])  # b is found dead on its first request
            assert all(r.ok for r in first) and {r.meta["server"] for r in first} == {a.url}
            assert f"PRM server {b_url} is down" in caplog.text
            with serve_standin(labelled, model_name="prm", port=urlsplit(b_url).port) as again:
                wait_for(lambda: f"PRM server {b_url} is back" in caplog.text, timeout=30)
                second = prm.score(QUESTION, [image], CANDIDATES[:4])
                assert again.stats.requests["/generate"] >= 1
        finally:
            prm.close()
    assert all(r.ok for r in second) and {r.meta["server"] for r in second} == {a.url, b_url}
