import json
import math
import multiprocessing as mp
import os
import threading

import pandas as pd
import pytest

from vlmeval_prm.store.jsonl import CandidateStore, index_records, read_records
from vlmeval_prm.store.records import (
    SCHEMA_VERSION,
    CandidateRecord,
    SampleRecord,
    ScoreRecord,
    StoreError,
    Summary,
    from_json,
    to_json,
)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "store_v0", "VLMEvalPRM-TinyPolicy-BoN4")
V0_STORE = os.path.join(FIXTURE, "VLMEvalPRM-TinyPolicy-BoN4_VLMEvalPRM_MiniMCQ_bon_candidates.jsonl")
V0_PRED = os.path.join(FIXTURE, "VLMEvalPRM-TinyPolicy-BoN4_VLMEvalPRM_MiniMCQ.xlsx")


def _writer(path, worker, count):
    store = CandidateStore(path)
    for i in range(count):
        store.append(CandidateRecord(key=f"k{worker}", i=i, text="t" * 3000))


def test_records_are_indexed_and_last_record_wins(tmp_path):
    path = str(tmp_path / "s.jsonl")
    store = CandidateStore(path)
    store.append(SampleRecord(key="a", question="q"))
    store.append(CandidateRecord(key="a", i=0, text=None, error="boom"))
    store.append(CandidateRecord(key="a", i=0, text="retried"))
    store.append(ScoreRecord(key="a", i=0, prm="p", mode="step", steps=["s"], step_scores=[0.5]))
    fresh = CandidateStore(path).get("a")
    assert fresh.sample.question == "q"
    assert fresh.candidates[0].text == "retried" and fresh.text(0) == "retried" and fresh.text(1) is None
    assert fresh.score(0, "p").step_scores == [0.5]
    assert fresh.score(0, "p", "outcome") is None


def test_torn_line_from_killed_writer_is_skipped_and_fenced(tmp_path):
    path = tmp_path / "s.jsonl"
    CandidateStore(str(path)).append(CandidateRecord(key="a", i=0, text="ok"))
    with open(path, "ab") as f:
        f.write(b'{"kind": "candidate", "key": "a", "i": 1, "te')  # kill -9 mid-write
    store = CandidateStore(str(path))
    assert sorted(store.get("a").candidates) == [0]
    store.append(CandidateRecord(key="a", i=1, text="again"))
    recs = list(read_records(str(path)))
    assert [r.i for r in recs] == [0, 1] and recs[1].text == "again"


def test_every_line_is_versioned_and_round_trips(tmp_path):
    records = [
        SampleRecord(key="a", dataset="D", question="q?", images=["/x.png"], n=2, policy="P"),
        CandidateRecord(key="a", i=1, text="t", settings={"temperature": 0.7}, policy="P", sampling="s1"),
        ScoreRecord(
            key="a",
            i=1,
            prm="p",
            mode="outcome",
            response_score=0.25,
            steps=["t"],
            step_scores=[0.25],
            bounds=[None],
            meta={"identity": {"backend": "b"}},
            retry=False,
            sampling="s1",
            scorer="p1",
        ),
    ]
    path = str(tmp_path / "s.jsonl")
    for rec in records:
        CandidateStore(path).append(rec)
    lines = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert [line["v"] for line in lines] == [SCHEMA_VERSION] * 3
    # the on-disk names are the documented ones (README, "What is stored"), in this order
    assert list(lines[0]) == ["kind", "v", "key", "dataset", "question", "images", "n", "policy"]
    assert list(lines[1]) == ["kind", "v", "key", "i", "text", "error", "settings", "policy", "sampling"]
    assert list(lines[2]) == [
        "kind",
        "v",
        "key",
        "i",
        "prm",
        "mode",
        "response_score",
        "steps",
        "step_scores",
        "error",
        "bounds",
        "meta",
        "retry",
        "sampling",
        "scorer",
    ]
    assert list(read_records(path)) == records
    assert [from_json(to_json(r)) for r in records] == records


def test_lines_of_the_previous_version_load():
    """Lines without ``v`` (version 0), as the previous release wrote them, and older score lines
    without ``mode``/``bounds``/``meta``/``retry``."""
    old = [
        {"kind": "sample", "key": "a", "question": "q", "images": [], "n": 2},
        {"kind": "candidate", "key": "a", "i": "0", "text": "t", "error": None, "settings": {}},
        {"kind": "score", "key": "a", "i": 0, "prm": "p", "steps": ["t"], "step_scores": [0.5], "error": None},
        {"kind": "note", "key": "a"},
        {"kind": "score", "key": "a", "prm": "p"},
    ]  # unknown kind; no "i"
    recs = [r for r in map(from_json, old) if r is not None]
    assert [type(r) for r in recs] == [SampleRecord, CandidateRecord, ScoreRecord]
    assert recs[1].i == 0 and recs[2].mode == "step" and recs[2].retry is False and recs[2].meta == {}


def test_candidates_belong_to_their_settings_and_scores_to_their_scorer(tmp_path):
    """Version 2 lookups: a run's digests find its own records; records without digests (versions 0
    and 1) match any settings and any scorer; a lookup without digests finds the latest of any."""
    path = str(tmp_path / "s.jsonl")
    store = CandidateStore(path)
    store.append(CandidateRecord(key="a", i=0, text="old"))  # written before version 2
    store.append(ScoreRecord(key="a", i=0, prm="p", steps=["old"], step_scores=[0.1]))
    store.append(CandidateRecord(key="a", i=1, text="t1", sampling="s1"))
    store.append(ScoreRecord(key="a", i=1, prm="p", steps=["t1"], step_scores=[0.2], sampling="s1", scorer="x"))
    store.append(ScoreRecord(key="a", i=1, prm="p", steps=["t1"], step_scores=[0.3], sampling="s1", scorer="y"))
    store.append(CandidateRecord(key="a", i=1, text="t2", sampling="s2"))
    entry = CandidateStore(path).get("a")
    assert entry.text(0, "s1") == entry.text(0, "s2") == entry.text(0) == "old"
    assert entry.score(0, "p", sampling="s1", scorer="x").step_scores == [0.1]  # an old score is any scorer's
    assert entry.text(1, "s1") == "t1" and entry.text(1, "s2") == "t2" and entry.text(1) == "t2"
    assert entry.text(1, "s3") is None
    assert entry.score(1, "p", sampling="s1", scorer="x").step_scores == [0.2]
    assert entry.score(1, "p", sampling="s1", scorer="y").step_scores == [0.3]
    assert entry.score(1, "p", sampling="s1", scorer="z") is None
    assert entry.score(1, "p", sampling="s1").step_scores == [0.3]  # the latest of any scorer
    assert entry.score(1, "p", sampling="s2", scorer="x") is None  # the scores are t1's, not t2's
    assert entry.score(1, "p") is None  # the latest candidate (t2) has no score


def test_digests_are_stable_and_short():
    from vlmeval_prm.store.records import DIGEST_CHARS, digest

    a = digest({"temperature": 0.7, "top_p": 0.95, "step_prompt": "x"})
    assert a == digest({"step_prompt": "x", "top_p": 0.95, "temperature": 0.7}) and len(a) == DIGEST_CHARS
    assert a != digest({"temperature": 1.5, "top_p": 0.95, "step_prompt": "x"})


def test_the_shipped_version_0_store_loads():
    raw = [json.loads(line) for line in open(V0_STORE, encoding="utf-8")]
    assert all("v" not in line for line in raw)  # written before the schema version existed
    samples = index_records(read_records(V0_STORE))
    assert len(samples) == 5
    for entry in samples.values():
        assert entry.sample.n == 4 and sorted(entry.candidates) == [0, 1, 2, 3]
        for i in range(4):
            line = next(r for r in raw if r["kind"] == "score" and r["key"] == entry.sample.key and r["i"] == i)
            rec = entry.score(i, "transformers:tiny:prm")
            assert rec.usable and rec.step_scores == line["step_scores"] and rec.steps == line["steps"]
            assert rec.response_score == line["response_score"]
    summaries = [Summary.from_json(x) for x in pd.read_excel(V0_PRED)["extra_records"]]
    assert {s.key for s in summaries} == set(samples)
    for s in summaries:
        assert s.n == 4 and s.prm == "transformers:tiny:prm" and s.failures["prm"] == 0
        assert s.scores == [samples[s.key].score(i, s.prm).response_score for i in range(4)]


def test_a_newer_schema_version_is_an_error_not_a_guess(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"kind": "candidate", "v": SCHEMA_VERSION + 1, "key": "a", "i": 0}) + "\n")
    with pytest.raises(StoreError, match="upgrade"):
        list(read_records(str(path)))
    with pytest.raises(StoreError):
        Summary.from_json(json.dumps({"v": SCHEMA_VERSION + 1, "key": "a", "n": 2}))


@pytest.mark.parametrize(
    "kwargs,usable,reason",
    [
        ({"steps": ["a", "b"], "step_scores": [0.2, 0.9]}, True, None),
        ({"steps": [], "step_scores": None, "error": "candidate has no steps"}, False, "no_steps"),
        ({"steps": ["a"], "step_scores": None, "error": "HTTP 400"}, False, "prm"),
        ({"steps": ["a"], "step_scores": [0.3], "error": "late error"}, False, "prm"),
        ({"steps": ["a", "b"], "step_scores": [math.nan, 0.9]}, False, "non_finite"),
        ({"steps": ["a", "b"], "step_scores": [0.9, math.inf]}, False, "non_finite"),
    ],
)
def test_score_usable_is_one_property(kwargs, usable, reason):
    rec = ScoreRecord(key="a", i=0, prm="p", **kwargs)
    assert rec.usable is usable and rec.unscored_reason == reason
    assert rec.scores == (kwargs["step_scores"] if usable else None)


def test_a_nan_step_score_survives_the_store_and_reads_unscored(tmp_path):
    path = str(tmp_path / "s.jsonl")
    CandidateStore(path).append(ScoreRecord(key="a", i=0, prm="p", steps=["a", "b"], step_scores=[0.4, math.nan]))
    (rec,) = read_records(path)
    assert math.isnan(rec.step_scores[1]) and not rec.usable and rec.unscored_reason == "non_finite"


def test_summary_round_trips_and_reads_the_previous_format():
    s = Summary(key="k", n=3, chosen=2, scores=[None, 0.5, 0.5], prm="p", failures={"prm": 1}, unscored=1, tied=[1, 2])
    assert json.loads(s.to_json())["v"] == SCHEMA_VERSION and Summary.from_json(s.to_json()) == s
    old = (
        '{"key": "k", "n": 2, "chosen": 0, "scores": [0.5, null], "aggregate": "mean", "prm": "p", '
        '"failures": {"generation": 0, "no_steps": 0, "prm": 1}, "duplicates": 0}'
    )
    got = Summary.from_json(old)
    assert (got.chosen, got.scores, got.failures["prm"], got.tied) == (0, [0.5, None], 1, [])
    assert Summary.from_json(None) is None and Summary.from_json("not json") is None


def test_concurrent_processes_and_threads_never_interleave(tmp_path):
    """torchrun ranks are processes, --api-nproc workers are threads: both share one file."""
    path = str(tmp_path / "s.jsonl")
    procs = [mp.get_context("fork").Process(target=_writer, args=(path, w, 200)) for w in range(3)]
    threads = [threading.Thread(target=_writer, args=(path, 10 + w, 200)) for w in range(3)]
    for p in procs + threads:
        p.start()
    for p in procs + threads:
        p.join()
    lines = open(path, encoding="utf-8").read().splitlines()
    assert len(lines) == 6 * 200
    recs = [json.loads(line) for line in lines]  # every line parses: no interleaving
    for w in (0, 1, 2, 10, 11, 12):
        assert sorted(r["i"] for r in recs if r["key"] == f"k{w}") == list(range(200))
