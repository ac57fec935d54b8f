"""Stored work belongs to what produced it: a score to its scorer's identity (backend, checkpoint or
served model, format, read-out options, max_steps), a candidate to its sampling settings. A rerun
with other ones does the work again and says so once; the same ones do nothing; old stores read as
before. In process here; through ``python -m vlmeval.run`` in tests/test_identity_e2e.py."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from vlmeval_prm.counters import COUNTS
from vlmeval_prm.host.bon import BestOfN
from vlmeval_prm.prm import scorer_identity
from vlmeval_prm.store.jsonl import CandidateStore, index_records, read_records
from vlmeval_prm.store.records import CandidateRecord, SampleRecord, ScoreRecord, digest

SPEC = "transformers:tiny:prm"
N = 3


@pytest.fixture
def make_bon(tiny_paths, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMEVAL_PRM_STORE_DIR", str(tmp_path / "store"))

    def make(**kw):
        base = {"class": "TransformersChat", "model_path": "tiny:policy", "max_new_tokens": 16}
        return BestOfN(model=base, name="tiny-bon", **{"n": N, "prm": SPEC, **kw})

    return make


@pytest.fixture
def message(tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (200, 20, 20)).save(path)
    return [{"type": "image", "value": str(path)}, {"type": "text", "value": "What colour is the square?"}]


def store_path(tmp_path):
    (path,) = (tmp_path / "store").glob("*_bon_candidates.jsonl")
    return str(path)


def run(bon, message):
    COUNTS.clear()
    summary = json.loads(bon.generate(message, "Demo")["extra_records"])
    return summary, COUNTS["policy_sequences"], COUNTS["prm_sequences"]


# -- the scorer's identity --------------------------------------------------------------------------


def test_a_transformers_identity_loads_no_model(monkeypatch):
    import vlmeval_prm.prm.hf_backend as hf_backend

    def refuse(*args, **kwargs):
        raise AssertionError("the PRM was loaded to compute its identity")

    monkeypatch.setattr(hf_backend, "load_model_and_processor", refuse)
    monkeypatch.setattr(hf_backend, "load_remote_code_model", refuse)
    identity = scorer_identity(SPEC)
    assert identity["backend"] == "transformers" and identity["checkpoint"].startswith("tiny:prm@v")
    assert identity["format"]["good_token"] == "+" and identity["format"]["bad_token"] == "-"
    assert identity["dtype"] == "float32" and identity["format"]["template"] is None


def test_options_that_change_scores_change_the_identity_and_speed_options_do_not(tmp_path):
    base = digest(scorer_identity(SPEC))
    from vlmeval_prm.prm.formats.visualprm import PRM_SYSTEM_PROMPT

    assert digest(scorer_identity(SPEC, {"system_prompt": PRM_SYSTEM_PROMPT})) == base  # the default, given
    for speed in ({"batch_size": 2}, {"share_prefix": False}, {"kv_budget_mb": 1.0}, {"device": "cpu"}):
        assert digest(scorer_identity(SPEC, speed)) == base, speed
    for option in ({"system_prompt": "Judge."}, {"system_prompt": None}, {"template": "internvl2_5"}, {"max_num": 6}):
        assert digest(scorer_identity(SPEC, option)) != base, option
    assert digest(scorer_identity(SPEC, {"dtype": "bfloat16"})) != base
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "ckpt")
    assert scorer_identity(f"transformers:{tmp_path / 'link'}")["checkpoint"] == str((tmp_path / "ckpt").resolve())


class ModelsServer:
    """Answers ``GET /v1/models`` with a model name that can change, counting the requests."""

    def __init__(self):
        self.model, self.requests = "prm-a", 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                owner.requests += 1
                body = json.dumps({"object": "list", "data": [{"id": owner.model, "object": "model"}]}).encode()
                self.send_response(200 if self.path == "/v1/models" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_a_served_identity_is_the_model_the_server_names_with_one_request():
    server = ModelsServer()
    try:
        spec = f"lmdeploy:{server.url}"
        first = scorer_identity(spec)
        assert server.requests == 1 and first["backend"] == "lmdeploy" and first["model"] == "prm-a"
        assert digest(scorer_identity(spec, {"concurrency": 4, "timeout": 5.0, "skip_prefix_rows": True})) == digest(
            first
        )
        assert digest(scorer_identity(spec, {"top_logprobs": 20})) != digest(first)
        server.model = "prm-b"  # another model behind the same URL
        assert scorer_identity(spec)["model"] == "prm-b" and digest(scorer_identity(spec)) != digest(first)
    finally:
        server.server.shutdown()


# -- BestOfN: scores belong to their scorer ---------------------------------------------------------


def test_another_system_prompt_rescores_every_candidate_and_says_so_once(make_bon, message, tmp_path, caplog):
    first, sampled, scored = run(make_bon(), message)
    assert sampled == N and scored == N and first["scorer"] and first["sampling"]
    same, sampled, scored = run(make_bon(), message)
    assert (sampled, scored) == (0, 0) and same == first
    bon = make_bon(prm_options={"system_prompt": "Judge each step."})
    with caplog.at_level(logging.WARNING):
        changed, sampled, scored = run(bon, message)
        again, *_ = run(bon, message)  # a second question of the same run would not say it again
    assert sampled == 0 and scored == N and changed["scorer"] != first["scorer"]
    assert again == changed
    lines = [r.getMessage() for r in caplog.records if "another scorer" in r.getMessage()]
    assert len(lines) == 1 and "format.system_prompt" in lines[0], lines
    entry = index_records(read_records(store_path(tmp_path)))[first["key"]]
    for summary in (first, changed):  # both scorers' scores are kept; each summary reads its own
        recs = [entry.score(i, SPEC, "step", summary["sampling"], summary["scorer"]) for i in range(N)]
        assert [r.scorer for r in recs] == [summary["scorer"]] * N
        assert [r.response_score for r in recs] == summary["scores"]
        assert all(r.meta["identity"]["format"]["system_prompt"] for r in recs)
    back, sampled, scored = run(make_bon(), message)  # the first prompt again: its scores are still there
    assert (sampled, scored) == (0, 0) and back == first


def test_another_max_steps_rescores_and_a_fully_scored_rerun_never_loads_the_prm(make_bon, message):
    run(make_bon(), message)
    bon = make_bon()
    run(bon, message)
    assert bon.scoring._scorer is None  # computing the identity did not load it either
    changed, sampled, scored = run(make_bon(max_steps=2), message)
    assert sampled == 0 and scored == N


def test_scores_from_before_the_identity_existed_match_any_scorer(make_bon, message, tmp_path):
    """A version 1 store: lines without digests. Read as before, whatever the options now."""
    first, *_ = run(make_bon(), message)
    path = store_path(tmp_path)
    old = []
    for line in open(path, encoding="utf-8"):
        obj = json.loads(line)
        obj["v"] = 1
        obj.pop("sampling", None)
        obj.pop("scorer", None)
        old.append(json.dumps(obj))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(old) + "\n")
    again, sampled, scored = run(make_bon(prm_options={"system_prompt": "Judge."}, temperature=1.3), message)
    assert (sampled, scored) == (0, 0)
    assert again["scores"] == first["scores"] and again["chosen"] == first["chosen"]


# -- BestOfN: candidates belong to their sampling settings ------------------------------------------


def test_other_sampling_settings_sample_afresh_and_say_so_once(make_bon, message, tmp_path, caplog):
    first, *_ = run(make_bon(), message)
    with caplog.at_level(logging.WARNING):
        hot, sampled, scored = run(make_bon(temperature=1.5), message)
    assert sampled == N and scored == N and hot["sampling"] != first["sampling"]
    lines = [r.getMessage() for r in caplog.records if "sampled with other settings" in r.getMessage()]
    assert len(lines) == 1 and "'temperature': 1.5" in lines[0], lines
    assert run(make_bon(temperature=1.5), message)[1:] == (0, 0)
    assert run(make_bon(), message) == (first, 0, 0)  # the first settings' candidates are still there
    for changed in ({"top_p": 0.5}, {"top_k": 5}, {"max_new_tokens": 8}, {"first_greedy": True}):
        assert run(make_bon(**changed), message)[1] == N, changed
    assert run(make_bon(batch_size=1), message)[1:] == (0, 0)  # speed only
    digests = {r.sampling for r in read_records(store_path(tmp_path)) if isinstance(r, CandidateRecord)}
    assert len(digests) == 6


def test_a_store_without_sampling_digests_reads_as_before(tmp_path, make_bon, message):
    bon = make_bon()
    key = "k"
    store = CandidateStore(str(tmp_path / "old.jsonl"))
    store.append(SampleRecord(key=key, n=1), CandidateRecord(key=key, i=0, text="Red.\n\nAnswer: A"))
    store.append(ScoreRecord(key=key, i=0, prm=SPEC, steps=["Red.", "Answer: A"], step_scores=[0.4, 0.6]))
    entry = store.get(key)
    assert entry.text(0, bon.sampling_id) == "Red.\n\nAnswer: A"
    assert entry.score(0, SPEC, "step", bon.sampling_id, bon.prm_identity[1]).step_scores == [0.4, 0.6]


def test_another_model_behind_the_same_url_rescores_every_candidate(make_bon, message, caplog):
    pytest.importorskip("lmdeploy")
    from standins.lmdeploy_standin import serve_standin

    with serve_standin("tiny:prm", model_name="prm-a") as server:
        url, port = server.url, int(server.url.rsplit(":", 1)[1])
        bon = make_bon(prm=f"lmdeploy:{url}")
        first, sampled, _ = run(bon, message)
        assert sampled == N and all(s is not None for s in first["scores"])
        assert run(make_bon(prm=f"lmdeploy:{url}"), message)[1:] == (0, 0)
    with serve_standin("tiny:prm", model_name="prm-b", port=port), caplog.at_level(logging.WARNING):
        bon = make_bon(prm=f"lmdeploy:{url}")
        COUNTS.clear()
        changed = json.loads(bon.generate(message, "Demo")["extra_records"])
        assert COUNTS["policy_sequences"] == 0 and bon.prm.requests_sent > 0
    assert changed["scorer"] != first["scorer"]
    (line,) = [r.getMessage() for r in caplog.records if "another scorer" in r.getMessage()]
    assert "changed: model" in line
