"""Best-of-N through ``python -m vlmeval.run`` with the PRM served over LMDeploy's real HTTP router
(stand-in engine on the tiny PRM, since LMDeploy has no CPU engine): same store and predictions as
the in-process backend, and the same resume behaviour."""

import json
import os
import shutil

import pytest
from test_e2e_bon import N, prediction_file, store_file, vlmeval_run

from vlmeval_prm.counters import read_counter_file
from vlmeval_prm.store.jsonl import encode, index_records, read_records

pytestmark = pytest.mark.e2e


def test_http_backend_matches_in_process_and_resumes(tmp_path, tiny_paths, monkeypatch):
    from standins.lmdeploy_standin import label_boosted_copy, serve_standin

    # "+" and "-" raised alike (P(+) unchanged) so they rank first, as in a trained PRM, and the
    # served scores are exact values rather than bounds
    prm_path = label_boosted_copy(tiny_paths["prm"], str(tmp_path / "prm"), {"+": 8.0, "-": 8.0})
    LOCAL = f"transformers:{prm_path}"
    local, served = tmp_path / "local", tmp_path / "served"
    local.mkdir()
    monkeypatch.setenv("VLMEVAL_PRM_SPEC", LOCAL)
    vlmeval_run(local, local / "c.jsonl")
    local_store = index_records(read_records(str(store_file(local))))

    # The served run starts from the same candidates (a resume), so only the PRM differs.
    store_file(served).parent.mkdir(parents=True)
    with open(store_file(served), "wb") as f:
        for rec in read_records(str(store_file(local))):
            if rec.kind != "score":
                f.write(encode(rec))

    with serve_standin(prm_path) as server:
        spec = f"lmdeploy:{server.url}"
        monkeypatch.setenv("VLMEVAL_PRM_SPEC", spec)
        vlmeval_run(served, served / "c.jsonl")
        counts = read_counter_file(str(served / "c.jsonl"))
        assert counts["policy_sequences"] == 0
        generate_requests = server.stats.requests["/generate"]
        with_steps = [sum(1 for i in range(N) if e.score(i, LOCAL).steps) for e in local_store.values()]
        # one request per candidate; at most one more per sample (shared-prefix measure) and a mode probe
        assert sum(with_steps) <= generate_requests <= sum(with_steps) + sum(1 for k in with_steps if k) + 1

        served_store = index_records(read_records(str(store_file(served))))
        assert set(served_store) == set(local_store)
        for key, entry in served_store.items():
            for i in range(N):
                a, b = local_store[key].score(i, LOCAL), entry.score(i, spec)
                assert a.steps == b.steps and b.bounds is None
                if a.step_scores is None:
                    assert b.step_scores is None
                    continue
                assert max(abs(x - y) for x, y in zip(a.step_scores, b.step_scores)) < 1e-4

        import pandas as pd

        read = lambda p: pd.read_excel(p) if p.endswith("xlsx") else pd.read_csv(p, sep="\t")  # noqa: E731
        local_pred, served_pred = read(prediction_file(local)), read(prediction_file(served))
        for a, b in zip(local_pred["extra_records"], served_pred["extra_records"]):
            a, b = json.loads(a), json.loads(b)
            scores = sorted((s for s in a["scores"] if s is not None), reverse=True)
            if len(scores) < 2 or scores[0] - scores[1] > 1e-4:  # a near-tie may flip either way
                assert a["chosen"] == b["chosen"]
        # resume: without VLMEvalKit's predictions the store alone serves the rerun: nothing is scored again.
        # The client still connects once, since stored scores belong to the model the server names
        # (/health, /v1/models, the /generate probe that picks the mode, /v1/encode at start).
        os.remove(prediction_file(served))
        before = dict(server.stats.requests)
        vlmeval_run(served, served / "c2.jsonl")
        new = {path: n - before.get(path, 0) for path, n in server.stats.requests.items()}
        assert new.get("/generate", 0) <= 1, new  # the start-up probe, no candidate
        assert sum(new.values()) <= 5, new
        prediction_file(served)
    shutil.rmtree(local / "LMUData", ignore_errors=True)
