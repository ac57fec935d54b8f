import json
import multiprocessing as mp
import threading

from vlmeval_prm.store.jsonl import CandidateStore, read_records


def _writer(path, worker, count):
    store = CandidateStore(path)
    for i in range(count):
        store.append({"kind": "candidate", "key": f"k{worker}", "i": i, "text": "t" * 3000, "error": None})


def test_records_are_indexed_and_last_record_wins(tmp_path):
    path = str(tmp_path / "s.jsonl")
    store = CandidateStore(path)
    store.append({"kind": "sample", "key": "a", "question": "q"})
    store.append({"kind": "candidate", "key": "a", "i": 0, "text": None, "error": "boom"})
    store.append({"kind": "candidate", "key": "a", "i": 0, "text": "retried", "error": None})
    store.append({"kind": "score", "key": "a", "i": 0, "prm": "p", "mode": "step", "step_scores": [0.5]})
    fresh = CandidateStore(path).get("a")
    assert fresh.sample["question"] == "q"
    assert fresh.candidates[0]["text"] == "retried"
    assert fresh.score(0, "p")["step_scores"] == [0.5]
    assert fresh.score(0, "p", "outcome") is None


def test_torn_line_from_killed_writer_is_skipped_and_fenced(tmp_path):
    path = tmp_path / "s.jsonl"
    CandidateStore(str(path)).append({"kind": "candidate", "key": "a", "i": 0, "text": "ok"})
    with open(path, "ab") as f:
        f.write(b'{"kind": "candidate", "key": "a", "i": 1, "te')  # kill -9 mid-write
    store = CandidateStore(str(path))
    assert sorted(store.get("a").candidates) == [0]
    store.append({"kind": "candidate", "key": "a", "i": 1, "text": "again"})
    recs = list(read_records(str(path)))
    assert [r["i"] for r in recs] == [0, 1] and recs[1]["text"] == "again"


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
