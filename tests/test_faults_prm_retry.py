"""D5: a PRM failure is classified where it happens. Permanent ones (HTTP 400 such as a context
overflow, a placeholder mismatch, no steps) are not scored again on a rerun; transient ones
(connection errors, timeouts, HTTP 5xx) are; ``retry_failed`` scores every failure again.

BestOfN on the tiny local policy, scored by LMDeploy 0.18's own api_server app around the CPU
stand-in engine (no GPU here); faults are injected in front of it (``standins.lmdeploy_standin``).
"""

import pytest

pytest.importorskip("lmdeploy")

from standins.lmdeploy_standin import serve_standin  # noqa: E402
from vlmeval_prm.host.bon import BestOfN  # noqa: E402
from vlmeval_prm.prm.base import failed, prepare  # noqa: E402
from vlmeval_prm.store.jsonl import index_records, read_records  # noqa: E402

RETRIES = 1  # so a transient fault that outlasts the retries takes (1 + RETRIES) requests per candidate
N = 2


@pytest.fixture(scope="module")
def server(tiny_paths):
    with serve_standin(tiny_paths["prm"], model_name="tiny-prm") as srv:
        yield srv


@pytest.fixture
def make_bon(server, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMEVAL_PRM_STORE_DIR", str(tmp_path))

    def make(**kw):
        bon = BestOfN(
            model={"class": "TransformersChat", "model_path": "tiny:policy", "max_new_tokens": 24},
            n=N,
            prm=f"lmdeploy:{server.url}",
            name="tiny-lmdeploy-bon",
            prm_options={"max_retries": RETRIES, "backoff": 0.01},
            **kw,
        )
        bon.prm.score("Warm up?", [], [["a step"]])  # start-up probes go out before any fault is queued
        return bon

    return make


def message(question):
    return [{"type": "text", "value": question}]


def generate_requests(server, call):
    before = server.stats.requests["/generate"]
    out = call()
    return server.stats.requests["/generate"] - before, out


def stored(tmp_path):
    (path,) = tmp_path.glob("*_bon_candidates.jsonl")
    return list(read_records(str(path)))


def test_permanent_failures_stay_failed_and_transient_ones_are_scored_again(make_bon, server, tmp_path):
    bon = make_bon()
    server.faults.fail_next(N, 400)  # a bad request: LMDeploy's 400 (context length and the like)
    sent, _ = generate_requests(server, lambda: bon.generate(message("Permanent?"), "Demo"))
    assert sent == N  # 400 is not retried
    server.faults.fail_next(N * (1 + RETRIES), 503)  # the engine is unavailable, beyond the retries
    sent, _ = generate_requests(server, lambda: bon.generate(message("Transient?"), "Demo"))
    assert sent == N * (1 + RETRIES)
    server.faults.clear()
    scores = [r for r in stored(tmp_path) if r.kind == "score"]
    assert len(scores) == 2 * N and all(r.error for r in scores)
    assert sorted(r.retry for r in scores) == [False] * N + [True] * N
    assert all(("HTTP 400" in r.error) != r.retry for r in scores)

    rerun = make_bon()  # a rerun: a new process reads the store
    sent, out = generate_requests(server, lambda: rerun.generate(message("Permanent?"), "Demo"))
    assert sent == 0 and out["prediction"].startswith("Failed to obtain answer")
    sent, out = generate_requests(server, lambda: rerun.generate(message("Transient?"), "Demo"))
    assert sent == N and not out["prediction"].startswith("Failed to obtain answer")

    forced = make_bon(retry_failed=True)  # the user asks for every failure to be scored again
    sent, out = generate_requests(server, lambda: forced.generate(message("Permanent?"), "Demo"))
    assert sent == N and not out["prediction"].startswith("Failed to obtain answer")
    sent, _ = generate_requests(server, lambda: forced.generate(message("Transient?"), "Demo"))
    assert sent == 0  # scored by now: nothing to retry
    entries = index_records(stored(tmp_path))
    assert all(e.score(i, f"lmdeploy:{server.url}").usable for e in entries.values() for i in range(N))


def test_failures_known_before_any_call_are_permanent():
    steps, results = prepare([[], ["a"]], "step")
    assert results[0].error == "candidate has no steps" and not results[0].transient
    assert failed(["a"], "x").transient is False and failed(["a"], "x", transient=True).transient
