"""BestOfN on the tiny policy and PRM: selection, resume, and bad input recorded, never scored."""

import json
import logging

import pytest
from PIL import Image

from vlmeval_prm.counters import COUNTS
from vlmeval_prm.host.bon import FAIL_MSG, BestOfN
from vlmeval_prm.store.jsonl import index_records, read_records

SPEC = "transformers:tiny:prm"


@pytest.fixture
def make_bon(tiny_paths, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMEVAL_PRM_STORE_DIR", str(tmp_path / "store"))

    def make(**kw):
        base = {"class": "TransformersChat", "model_path": "tiny:policy", "max_new_tokens": 24}
        return BestOfN(model=base, prm=SPEC, name="tiny-bon", **{"n": 4, **kw})

    return make


@pytest.fixture
def message(tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGB", (60, 60), (20, 200, 20)).save(path)
    return [{"type": "image", "value": str(path)}, {"type": "text", "value": "What colour is the square?"}]


def store_of(tmp_path):
    (path,) = (tmp_path / "store").glob("*_bon_candidates.jsonl")
    return index_records(read_records(str(path)))


def test_selects_the_best_mean_and_records_everything(make_bon, message, tmp_path):
    bon = make_bon(first_greedy=True)
    out = bon.generate(message, dataset="Demo")
    summary = json.loads(out["extra_records"])
    (entry,) = store_of(tmp_path).values()
    assert sorted(entry.candidates) == [0, 1, 2, 3]
    assert entry.candidates[0].settings["do_sample"] is False
    assert all(entry.candidates[i].settings["temperature"] == 0.7 for i in (1, 2, 3))
    means = [entry.score(i, SPEC).response_score for i in range(4)]
    assert summary["scores"] == means
    assert means[summary["chosen"]] == max(means) and summary["tied"] == [i for i in range(4) if means[i] == max(means)]
    assert out["prediction"] == entry.candidates[summary["chosen"]].text
    assert entry.sample.question == "What colour is the square?"  # the PRM sees no step instruction


def test_second_call_reuses_the_store(make_bon, message):
    bon = make_bon()
    first = bon.generate(message, dataset="Demo")
    COUNTS.clear()
    again = make_bon().generate(message, dataset="Demo")  # a new process would build a new model too
    assert again == first
    assert COUNTS["policy_sequences"] == 0 and COUNTS["prm_sequences"] == 0


def test_unopenable_image_is_a_recorded_failure(make_bon, message, tmp_path):
    """After a first question that samples, a question whose image cannot be read is that row's recorded
    failure (on the very first question the same failure of every candidate stops the run: test_fail_fast)."""
    bon = make_bon()
    bon.generate(message, "Demo")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG but not really")
    out = bon.generate([{"type": "image", "value": str(bad)}, {"type": "text", "value": "Q?"}], "Demo")
    summary = json.loads(out["extra_records"])
    assert out["prediction"].startswith(FAIL_MSG) and summary["chosen"] is None
    assert summary["failures"]["generation"] == 4 and summary["scores"] == [None] * 4
    entry = store_of(tmp_path)[summary["key"]]
    assert all("image could not be opened" in entry.candidates[i].error for i in range(4))
    assert entry.scores == {}


def test_empty_generations_and_duplicates(make_bon, message, tmp_path, caplog, monkeypatch):
    from vlmeval_prm.host import bon as bon_module

    monkeypatch.setattr(bon_module, "DUPLICATES", bon_module.DuplicateTally())  # this test's first occurrence
    monkeypatch.setattr(bon_module.atexit, "register", lambda report: None)
    bon = make_bon()
    # Simulates what a policy can return: empty, whitespace-only and identical answers.
    replies = ["", "   \n\n ", "It is green.\n\nAnswer: B", "It is green.\n\nAnswer: B"]
    monkeypatch.setattr(bon.base, "_generate", lambda message, n, **kw: replies[:n])
    with caplog.at_level(logging.WARNING):
        out = bon.generate(message, "Demo")
    summary = json.loads(out["extra_records"])
    assert summary["failures"] == {"generation": 0, "no_steps": 2, "prm": 0, "non_finite": 0}
    assert summary["unscored"] == 2
    assert summary["duplicates"] == 1 and "identical" in caplog.text
    assert summary["scores"][:2] == [None, None] and summary["chosen"] in (2, 3)
    (entry,) = store_of(tmp_path).values()
    assert entry.score(0, SPEC).error == "candidate has no steps" and entry.score(0, SPEC).retry is False


def test_prm_failure_is_recorded_then_retried_when_asked(make_bon, message, tmp_path):
    bon = make_bon()
    bon.prm.max_length = 50  # every candidate overflows the PRM's context: a real, permanent PRM failure
    out = bon.generate(message, "Demo")
    summary = json.loads(out["extra_records"])
    assert out["prediction"].startswith(FAIL_MSG) and summary["failures"]["prm"] == 4
    (entry,) = store_of(tmp_path).values()
    assert all(entry.score(i, SPEC).step_scores is None and not entry.score(i, SPEC).retry for i in range(4))
    COUNTS.clear()
    make_bon().generate(message, "Demo")  # a plain rerun leaves a permanent failure alone
    assert COUNTS["policy_sequences"] == 0 and COUNTS["prm_sequences"] == 0
    fixed = make_bon(retry_failed=True).generate(message, "Demo")  # the user asks: scored, nothing sampled
    assert COUNTS["policy_sequences"] == 0 and COUNTS["prm_sequences"] == 4
    assert json.loads(fixed["extra_records"])["chosen"] is not None


def test_orm_scores_are_stored_beside_step_scores(make_bon, message, tmp_path):
    make_bon(orm=True).generate(message, "Demo")
    (entry,) = store_of(tmp_path).values()
    for i in range(4):
        outcome = entry.score(i, SPEC, "outcome")
        assert len(outcome.step_scores) == 1 and outcome.steps == ["\n\n".join(entry.score(i, SPEC).steps)]


def test_bad_configuration_fails_at_construction(make_bon):
    with pytest.raises(ValueError, match="aggregate"):
        make_bon(aggregate="median")
    with pytest.raises(KeyError, match="supported_VLM"):
        BestOfN(model="NoSuchModel-7B", prm=SPEC)


def test_prediction_is_the_base_models_own_answer_while_the_store_keeps_the_reasoning(
    make_bon, message, tmp_path, monkeypatch
):
    """A CoT family's adapter extracts the final answer the way the base model would (e.g. InternVL's
    MPO post-processing); the PRM scored, and the store keeps, the whole step-by-step text."""
    bon = make_bon()
    seen = []

    def final_answer(model, text, dataset):
        seen.append((model, text, dataset))
        return text.rsplit("Answer:", 1)[-1].strip()

    monkeypatch.setattr(bon.adapter, "final_answer", final_answer)
    replies = ["It is green.\n\nAnswer: B"] * 4
    monkeypatch.setattr(bon.base, "_generate", lambda message, n, **kw: replies[:n])
    out = bon.generate(message, dataset="Demo")
    (entry,) = store_of(tmp_path).values()
    chosen = json.loads(out["extra_records"])["chosen"]
    assert out["prediction"] == "B"
    assert seen == [(bon.base, entry.candidates[chosen].text, "Demo")]
    assert entry.candidates[chosen].text == replies[0] and entry.score(chosen, SPEC).steps == [
        "It is green.",
        "Answer: B",
    ]
