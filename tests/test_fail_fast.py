"""Fail fast: when every candidate of the first question fails with one and the same permanent
exception, the run stops with it (non-zero exit of ``python -m vlmeval.run``, no prediction file of
failures); transient failures are recorded and retried on the next run, as before."""

import json
import os
import subprocess

import httpx
import pandas as pd
import pytest
import requests
import torch
from commands import MiniRows, vlmeval_run_command
from PIL import Image
from vlmeval.inference import FAIL_MSG

from standins.openai_standin import SamplingStandin, _serving, gpt4v_bon_config
from vlmeval_prm.constants import COUNTERS_ENV, DEMO_ENV, SPEC_ENV
from vlmeval_prm.counters import read_counter_file
from vlmeval_prm.host.bon import BestOfN, PolicyFailure
from vlmeval_prm.policy.base import Sample, failed, is_transient, permanent_failure
from vlmeval_prm.store.jsonl import index_records, read_records
from vlmeval_prm.store.paths import store_file

SPEC = "transformers:tiny:prm"
N, ROWS = 2, 4
MINI = MiniRows(ROWS)
DATA = MINI.data


def _status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://x/v1/chat/completions")
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=httpx.Response(status, request=request))


def _chained() -> BaseException:
    try:
        try:
            raise httpx.ReadTimeout("slow")
        except httpx.ReadTimeout as exc:
            raise RuntimeError("the call failed") from exc
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    "exc,transient",
    [
        (ConnectionRefusedError("refused"), True),
        (TimeoutError("late"), True),
        (httpx.ConnectError("no route"), True),
        (httpx.ReadTimeout("slow"), True),
        (requests.exceptions.ConnectionError("reset"), True),
        (requests.exceptions.ReadTimeout("slow"), True),
        (_status_error(503), True),
        (_status_error(429), True),
        (torch.OutOfMemoryError("CUDA out of memory"), True),
        (RuntimeError(f"{FAIL_MSG}: Failed with all possible conversation turns."), True),
        (_chained(), True),
        (_status_error(401), False),
        (_status_error(400), False),
        (AttributeError("'InternLM2ForCausalLM' object has no attribute 'generate'"), False),
        (ValueError("The following `model_kwargs` are not used by the model: ['nn']"), False),
        (TypeError("model returned NoneType, not text"), False),
    ],
)
def test_failures_are_classified_transient_or_permanent(exc, transient):
    assert is_transient(exc) is transient


def test_only_one_and_the_same_permanent_exception_everywhere_stops():
    boom = AttributeError("no generate")
    assert permanent_failure([failed(boom, {}), failed(AttributeError("no generate"), {})]) is boom
    assert permanent_failure([failed(boom, {}), failed(AttributeError("other"), {})]) is None
    assert permanent_failure([failed(boom, {}), Sample("text", None, {})]) is None
    assert permanent_failure([failed(httpx.ConnectError("x"), {})] * 2) is None
    assert permanent_failure([Sample(None, "ValueError: unknown cause", {})] * 2) is None  # no exception to judge
    assert permanent_failure([]) is None


# -- in process ------------------------------------------------------------------------------------


@pytest.fixture
def make_bon(tiny_paths, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMEVAL_PRM_STORE_DIR", str(tmp_path / "store"))

    def make(failure=None, **kw):
        base = {"class": "TransformersChat", "model_path": "tiny:policy", "max_new_tokens": 16}
        bon = BestOfN(model=base, prm=SPEC, name="tiny-bon", **{"n": 3, **kw})
        bon.calls = 0
        real = bon.adapter.sample

        def sample(model, message, dataset, n, cfg, greedy_first=None, on_sample=None):
            bon.calls += 1
            exc = failure(bon.calls) if failure else None
            if exc is None:
                return real(model, message, dataset, n, cfg, greedy_first, on_sample)
            return [failed(exc, {}) for _ in range(n)]

        monkeypatch.setattr(bon.adapter, "sample", sample)
        return bon

    return make


def question(tmp_path, j):
    path = tmp_path / f"img{j}.png"
    Image.new("RGB", (40, 40), (20 * j, 200, 20)).save(path)
    return [{"type": "image", "value": str(path)}, {"type": "text", "value": f"Question {j}?"}]


def test_a_permanent_failure_of_the_first_question_stops_the_model(make_bon, tmp_path, caplog):
    bon = make_bon(lambda call: AttributeError("'InternLM2ForCausalLM' object has no attribute 'generate'"))
    with pytest.raises(PolicyFailure) as stop:
        bon.generate(question(tmp_path, 0), "Demo")
    assert isinstance(stop.value, SystemExit) and not isinstance(stop.value, Exception)
    assert "every candidate of the first question" in str(stop.value.code)
    assert "AttributeError: 'InternLM2ForCausalLM' object has no attribute 'generate'" in str(stop.value.code)
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)  # the exception itself is logged
    with pytest.raises(PolicyFailure):  # questions still in flight stop too, without sampling
        bon.generate(question(tmp_path, 1), "Demo")
    assert bon.calls == 1
    (path,) = (tmp_path / "store").glob("*_bon_candidates.jsonl")
    (entry,) = index_records(read_records(str(path))).values()
    assert all(entry.text(i) is None and "InternLM2" in entry.candidates[i].error for i in range(3))


def test_a_transient_failure_of_the_first_question_is_recorded_and_the_run_goes_on(make_bon, tmp_path):
    bon = make_bon(lambda call: httpx.ConnectError("connection refused") if call == 1 else ValueError("bad"))
    out = bon.generate(question(tmp_path, 0), "Demo")
    assert out["prediction"].startswith(FAIL_MSG) and json.loads(out["extra_records"])["failures"]["generation"] == 3
    # the first question was the test: a later permanent-looking failure is that question's own
    assert bon.generate(question(tmp_path, 1), "Demo")["prediction"].startswith(FAIL_MSG)
    ok = make_bon().generate(question(tmp_path, 0), "Demo")  # the next run samples it again
    assert json.loads(ok["extra_records"])["chosen"] is not None


def test_only_the_first_question_decides(make_bon, tmp_path):
    bon = make_bon(lambda call: None if call == 1 else AttributeError("broken later"))
    assert json.loads(bon.generate(question(tmp_path, 0), "Demo")["extra_records"])["chosen"] is not None
    assert bon.generate(question(tmp_path, 1), "Demo")["prediction"].startswith(FAIL_MSG)


def test_different_errors_do_not_stop(make_bon, tmp_path, monkeypatch):
    bon = make_bon()
    errors = iter([ValueError("a"), ValueError("b"), ValueError("c")])
    monkeypatch.setattr(
        bon.adapter, "sample", lambda model, message, dataset, n, *a, **k: [failed(next(errors), {}) for _ in range(n)]
    )
    assert bon.generate(question(tmp_path, 0), "Demo")["prediction"].startswith(FAIL_MSG)


# -- through python -m vlmeval.run ----------------------------------------------------------------


class UnauthorizedStandin(SamplingStandin):
    """A server that refuses the key: HTTP 401 to everything, a permanent failure."""

    def answer(self, payload, auth):
        self.record(payload, auth)
        return 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}


class DownStandin(SamplingStandin):
    """HTTP 503 to everything while ``down``: a transient failure."""

    down = True

    def answer(self, payload, auth):
        if self.down:
            self.record(payload, auth)
            return 503, {"error": {"message": "overloaded", "type": "server_error"}}
        return super().answer(payload, auth)


def vlmeval_run(work, server, model="GPT4V-BoN2"):
    (work / "LMUData").mkdir(exist_ok=True)
    (work / "config.json").write_text(json.dumps(gpt4v_bon_config(model, N, server, "sk-standin", MINI.config())))
    counters = work / "counters.jsonl"
    counters.unlink(missing_ok=True)
    env = {
        **os.environ,
        "LMUData": str(work / "LMUData"),
        COUNTERS_ENV: str(counters),
        SPEC_ENV: SPEC,
        DEMO_ENV: "1",
        "PYTHONUNBUFFERED": "1",
    }
    args = ["--config", str(work / "config.json"), *MINI.args(work / "LMUData")]
    proc = subprocess.run(
        vlmeval_run_command(args, work / "outputs", "--api-nproc", "2"),
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc.returncode, proc.stdout + proc.stderr, read_counter_file(str(counters))


@pytest.mark.e2e
def test_a_policy_that_always_fails_the_same_way_stops_the_run(tmp_path, tiny_paths):
    with _serving(UnauthorizedStandin()) as server:
        rc, out, counts = vlmeval_run(tmp_path, server)
    assert rc != 0, out[-4000:]
    assert "every candidate of the first question" in out and "401 Unauthorized" in out, out[-4000:]
    assert server.chat_calls <= 2  # the first question(s) in flight, then nothing
    folder = tmp_path / "outputs" / "GPT4V-BoN2"
    assert not [p for p in folder.glob(f"GPT4V-BoN2_{DATA}.*") if p.suffix in (".xlsx", ".tsv", ".json")]
    assert counts["prm_sequences"] == 0


@pytest.mark.e2e
def test_a_transient_failure_is_recorded_and_retried_by_the_next_run(tmp_path, tiny_paths):
    folder = tmp_path / "outputs" / "GPT4V-BoN2"
    with _serving(DownStandin()) as server:
        rc, out, _ = vlmeval_run(tmp_path, server)
        assert rc == 0, out[-4000:]
        first = pd.read_excel(folder / f"GPT4V-BoN2_{DATA}.xlsx")
        assert all(str(p).startswith(FAIL_MSG) for p in first["prediction"]) and len(first) == ROWS
        server.down = False
        rc, out, counts = vlmeval_run(tmp_path, server)
        assert rc == 0, out[-4000:]
    again = pd.read_excel(folder / f"GPT4V-BoN2_{DATA}.xlsx")
    assert not any(str(p).startswith(FAIL_MSG) for p in again["prediction"])
    store = index_records(read_records(store_file(str(folder), "GPT4V-BoN2", DATA)))
    assert len(store) == ROWS and all(e.text(i) for e in store.values() for i in range(N))
    assert counts["prm_sequences"] == ROWS * N
