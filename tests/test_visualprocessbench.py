"""VisualProcessBench in VLMEvalKit: release conversion, critic prompt, evaluation, PRMJudge.

Runs on the tiny fake release in tests/fixtures/visualprocessbench (the real one cannot be
downloaded here). PRMJudge is driven by a fake PRMScorer defined below: real backends need model
weights or a GPU server and are tested elsewhere. Everything else is the real VLMEvalKit code.
"""

import base64
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import f1_score
from vlmeval.smp import dump, get_pred_file_path, load
from vlmeval.smp.file import INFER_FAIL_MSG

from vlmeval_prm.datasets import visualprocessbench as vpb
from vlmeval_prm.datasets.visualprocessbench import (
    FULL,
    MINI,
    TSV_COLUMNS,
    ReleaseError,
    VisualProcessBench,
    find_release,
    release_to_frame,
)
from vlmeval_prm.host import prm_judge
from vlmeval_prm.host.plugin import PRM_MODELS, SPEC_ENV
from vlmeval_prm.host.prm_judge import PRMJudge
from vlmeval_prm.prm import PRMScorer, StepScores, failed

FIXTURE = Path(__file__).parent / "fixtures" / "visualprocessbench"
SAMPLES = [json.loads(line) for line in (FIXTURE / "test.jsonl").read_text().splitlines()]


def sk_macro(gold, pred) -> float:
    return 100 * f1_score(gold, pred, labels=[1, -1], average="macro", zero_division=0)


@pytest.fixture
def lmudata(tmp_path, monkeypatch):
    root = tmp_path / "LMUData"
    root.mkdir()
    monkeypatch.setenv("LMUData", str(root))
    monkeypatch.delenv(vpb.ROOT_ENV, raising=False)
    return root


def copy_release(dst: Path) -> Path:
    shutil.copytree(FIXTURE, dst, ignore=shutil.ignore_patterns("README.md"))
    return dst


def zip_folder(folder: Path, zip_path: Path, arc_prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, arc_prefix + f.relative_to(folder).as_posix())
    return zip_path


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def dataset(lmudata, tmp_path, monkeypatch):
    monkeypatch.setenv(vpb.ROOT_ENV, str(copy_release(tmp_path / "release")))
    return VisualProcessBench(FULL)


# ------------------------------------------------------------------------------------- conversion


def test_folder_release_becomes_a_vlmevalkit_tsv(dataset, lmudata):
    raw = load(str(lmudata / f"{FULL}.tsv"))
    assert list(raw.columns) == TSV_COLUMNS
    assert raw["index"].tolist() == list(range(len(SAMPLES)))
    for (_, row), sample in zip(raw.iterrows(), SAMPLES):
        assert json.loads(row["steps"]) == sample["response"]["steps"]
        assert json.loads(row["labels"]) == sample["response"]["process_correctness"]
        assert (row["question"], row["data_source"], row["policy_model"]) == (
            sample["question"],
            sample["data_source"],
            sample["policy_model"],
        )
    # Images are the release's bytes; a two-image sample keeps both, in order.
    assert base64.b64decode(dataset.data.iloc[0]["image"]) == (FIXTURE / SAMPLES[0]["image"][0]).read_bytes()
    two = dataset.data.iloc[1]["image"]
    assert isinstance(two, list) and len(two) == 2
    assert [base64.b64decode(x) for x in two] == [(FIXTURE / p).read_bytes() for p in SAMPLES[1]["image"]]
    dumped = dataset.dump_image(dataset.data.iloc[1])
    for path, rel in zip(dumped, SAMPLES[1]["image"]):
        assert Path(path).is_relative_to(lmudata / "images" / FULL)
        assert np.array_equal(
            np.asarray(Image.open(path).convert("RGB")), np.asarray(Image.open(FIXTURE / rel).convert("RGB"))
        )


def test_default_location_is_the_lmudata_folder(lmudata):
    copy_release(lmudata / FULL)
    ds = VisualProcessBench(FULL)
    assert len(ds) == len(SAMPLES) and ds.data_path == str(lmudata / f"{FULL}.tsv")


@pytest.mark.parametrize("arc_prefix", ["", "VisualProcessBench/"])
def test_zip_release_equals_folder_release(lmudata, tmp_path, monkeypatch, arc_prefix):
    folder = copy_release(tmp_path / "release")
    archive = zip_folder(folder, tmp_path / "vpb.zip", arc_prefix)
    frames = []
    for root in (folder, archive):
        monkeypatch.setenv(vpb.ROOT_ENV, str(root))
        release = find_release()
        frames.append(release_to_frame(release))
        release.close()
    pd.testing.assert_frame_equal(frames[1], frames[0])
    # The same zip dropped into $LMUData/VisualProcessBench/ is found without the variable.
    monkeypatch.delenv(vpb.ROOT_ENV)
    (lmudata / FULL).mkdir()
    shutil.copy(archive, lmudata / FULL / "release.zip")
    assert len(VisualProcessBench(FULL)) == len(SAMPLES)


@pytest.mark.parametrize("images_zip_has_folder", [True, False])
def test_zipped_image_folder_beside_test_jsonl(lmudata, tmp_path, monkeypatch, images_zip_has_folder):
    folder = copy_release(tmp_path / "release")
    if images_zip_has_folder:  # images.zip holds images/...
        zip_folder(folder / "images", folder / "images.zip", "images/")
    else:  # images.zip is the images folder itself
        zip_folder(folder / "images", folder / "images.zip")
    shutil.rmtree(folder / "images")
    monkeypatch.setenv(vpb.ROOT_ENV, str(folder))
    ds = VisualProcessBench(FULL)
    assert base64.b64decode(ds.data.iloc[2]["image"]) == (FIXTURE / SAMPLES[2]["image"][0]).read_bytes()


def test_conversion_happens_once(dataset, lmudata, monkeypatch):
    tsv = lmudata / f"{FULL}.tsv"
    before = (tsv.stat().st_mtime_ns, tsv.read_bytes())

    def must_not_convert(*_):
        raise AssertionError("the release was read again")

    monkeypatch.setattr(vpb, "find_release", must_not_convert)
    again = VisualProcessBench(FULL)
    assert (tsv.stat().st_mtime_ns, tsv.read_bytes()) == before
    assert len(again) == len(dataset)


def test_mini_takes_the_first_k_of_every_source(dataset, lmudata, monkeypatch):
    monkeypatch.setattr(vpb, "MINI_PER_SOURCE", 1)
    mini = VisualProcessBench(MINI)
    # First sample of MathVision (0), MMMU (2) and DynaMath (4), indices kept from the full set.
    assert mini.data["index"].tolist() == [0, 2, 4]
    assert (lmudata / f"{MINI}.tsv").is_file()
    assert mini.img_root == dataset.img_root
    assert vpb.mini_subset(load(str(lmudata / f"{FULL}.tsv")), 2)["index"].tolist() == [0, 1, 2, 3, 4, 5]


def test_missing_release_says_where_to_put_it(lmudata, monkeypatch):
    with pytest.raises(ReleaseError) as err:
        VisualProcessBench(FULL)
    message = str(err.value)
    assert str(lmudata / FULL) in message and vpb.ROOT_ENV in message and "test.jsonl" in message
    monkeypatch.setenv(vpb.ROOT_ENV, str(lmudata / "nowhere"))
    with pytest.raises(ReleaseError, match="nowhere is neither a folder"):
        VisualProcessBench(FULL)
    assert not (lmudata / f"{FULL}.tsv").exists()


def test_invalid_samples_are_reported_by_line(lmudata, tmp_path, monkeypatch):
    folder = copy_release(tmp_path / "release")
    rows = [json.loads(json.dumps(s)) for s in SAMPLES]
    rows[1]["response"]["process_correctness"] = [1, 0, -1]  # 4 steps, 3 labels
    rows[3]["response"]["process_correctness"] = [-1, 2]  # unknown label
    rows[3]["id"] = "q4"
    rows[5]["image"] = ["images/nope.png"]  # missing image
    write_jsonl(folder / "test.jsonl", rows)
    monkeypatch.setenv(vpb.ROOT_ENV, str(folder))
    with pytest.raises(ReleaseError) as err:
        VisualProcessBench(FULL)
    message = str(err.value)
    assert "3 invalid sample(s)" in message
    assert "line 2: 4 steps but 3 labels" in message
    assert "line 4 (id 'q4'): unknown label 2" in message
    assert "line 6: image 'images/nope.png' not found" in message
    assert not list(lmudata.glob("*.tsv")), "a failed conversion must not leave a TSV behind"


def test_steps_labels_length_mismatch_alone_is_an_error(lmudata, tmp_path, monkeypatch):
    folder = copy_release(tmp_path / "release")
    rows = [json.loads(json.dumps(s)) for s in SAMPLES]
    rows[6]["response"]["steps"].append("An extra step.")
    write_jsonl(folder / "test.jsonl", rows)
    monkeypatch.setenv(vpb.ROOT_ENV, str(folder))
    with pytest.raises(ReleaseError, match=r"1 invalid sample\(s\):\n  line 7: 3 steps but 2 labels"):
        VisualProcessBench(FULL)


# ------------------------------------------------------------------------------------ critic mode


def test_critic_prompt_has_images_and_numbered_steps(dataset):
    msgs = dataset.build_prompt(1)
    assert [m["type"] for m in msgs] == ["image", "image", "text"]
    assert all(os.path.isfile(m["value"]) for m in msgs[:2])
    text = msgs[-1]["value"]
    assert SAMPLES[1]["question"] in text
    assert "Step 4:\nAnswer: B" in text and "Step 5" not in text


def eval_file_with(dataset, work: Path, model: str, predictions: list[str]) -> str:
    work.mkdir(parents=True, exist_ok=True)
    data = dataset.data.drop(columns=["image"]).copy()
    data["prediction"] = predictions
    path = get_pred_file_path(str(work), model, dataset.dataset_name)
    dump(data, path)
    return path


def test_evaluate_critic_replies(dataset, tmp_path):
    gold = [s["response"]["process_correctness"] for s in SAMPLES]
    verdicts = [[1 if g >= 0 else -1 for g in labels] for labels in gold]  # a perfect critic
    verdicts[0][2] = 1  # ... with one miss
    replies = ["\n".join(f"**Step {i}:** {'+' if v == 1 else '-'}" for i, v in enumerate(vs, 1)) for vs in verdicts]
    replies[3] = "Step 1: -"  # partial reply: unparseable
    replies[5] = f"{INFER_FAIL_MSG}: timeout"  # inference failure
    eval_file = eval_file_with(dataset, tmp_path / "Critic", "Critic", replies)  # run.py's layout
    result = dataset.evaluate(eval_file).set_index("data_source")

    assert "best_threshold" not in result.columns  # detected as critic replies
    assert result.loc["Overall", "failed"] == 2 and result.loc["MMMU", "failed"] == 1
    kept = [i for i in range(len(SAMPLES)) if i not in (3, 5)]
    g = [x for i in kept for x in gold[i] if x != 0]
    p = [v for i in kept for x, v in zip(gold[i], verdicts[i]) if x != 0]
    assert result.loc["Overall", "F1"] == pytest.approx(sk_macro(g, p))
    assert result.loc["Overall", "F1_pessimistic"] < result.loc["Overall", "F1"]
    metrics = load(eval_file.replace(".xlsx", "_metrics.csv"))
    assert metrics["F1"].tolist() == pytest.approx(result["F1"].tolist(), nan_ok=True)
    details = load(eval_file.replace(".xlsx", "_critic_result.xlsx"))
    assert details["result"].tolist()[3] == "unparseable reply"
    assert details["result"].tolist()[5] == "inference failed"
    # VLMEvalKit's run summary reads these: the unparseable reply is the one "judge" failure.
    assert VisualProcessBench.report_judge_err(eval_file, total_samples=8) == {"failed": 1, "total": 8}
    assert VisualProcessBench.report_infer_err(eval_file) == {"failed": 1, "total": 8}


# -------------------------------------------------------------------------------------- PRM judge


class FakePRM(PRMScorer):
    """Stands in for a real PRM (weights/GPU unavailable here): fixed P(+) from the step text,
    failure for one question. Records every call to check one scorer call per sample."""

    identity = "fake:prm"

    def __init__(self):
        self.calls = []

    def score(self, question, images, candidates, mode="step"):
        self.calls.append((question, list(images), [list(c) for c in candidates], mode))
        if "slope" in question:
            return [failed(c, "context length exceeded") for c in candidates]
        return [StepScores(steps=list(c), scores=[fake_score(s) for s in c]) for c in candidates]


def fake_score(step: str) -> float:
    return (sum(map(ord, step)) % 97) / 96


def test_prm_judge_through_vlmevalkit_inference_and_evaluate(dataset, tmp_path):
    from vlmeval.inference import infer_data_job

    scorer = FakePRM()
    judge = PRMJudge(prm=scorer)
    work = tmp_path / "work"
    work.mkdir()
    infer_data_job(judge, work_dir=str(work), model_name="FakePRM", dataset=dataset)

    assert len(scorer.calls) == len(SAMPLES)  # one scorer call (one forward pass) per sample
    by_question = {c[0]: c for c in scorer.calls}
    for sample in SAMPLES:
        question, images, candidates, mode = by_question[sample["question"]]
        assert candidates == [sample["response"]["steps"]] and mode == "step"
        assert len(images) == len(sample["image"]) and all(os.path.isfile(p) for p in images)

    pred_file = get_pred_file_path(str(work), "FakePRM", FULL)
    result = dataset.evaluate(pred_file).set_index("data_source")
    assert result.loc["Overall", "threshold"] == 0.5  # detected as PRM scores
    assert result.loc["Overall", "failed"] == 1 and result.loc["DynaMath", "failed"] == 1
    kept = [s for s in SAMPLES if "slope" not in s["question"]]
    pairs = [
        (g, fake_score(st))
        for s in kept
        for g, st in zip(s["response"]["process_correctness"], s["response"]["steps"])
        if g != 0
    ]
    gold = [g for g, _ in pairs]
    scores = np.array([x for _, x in pairs])
    assert result.loc["Overall", "F1"] == pytest.approx(sk_macro(gold, np.where(scores > 0.5, 1, -1)))
    best = max(sk_macro(gold, np.where(scores > t, 1, -1)) for t in np.linspace(0, 1, 101))
    assert result.loc["Overall", "F1_best"] == pytest.approx(best)
    assert (work / f"FakePRM_{FULL}_score_result.xlsx").is_file()


class BrokenPRM(PRMScorer):
    identity = "broken:prm"

    def __init__(self, behaviour):
        self.behaviour = behaviour

    def score(self, question, images, candidates, mode="step"):
        if self.behaviour == "raise":
            raise ConnectionError("server down")
        steps = list(candidates[0])
        if self.behaviour == "short":
            return [StepScores(steps=steps[:1], scores=[0.5])]
        return [failed(steps, "PRM forward failed: OOM")]


@pytest.mark.parametrize(
    "behaviour, reason", [("raise", "ConnectionError: server down"), ("short", "1 scores for 3 steps"), ("fail", "OOM")]
)
def test_prm_judge_records_failures_instead_of_scores(dataset, behaviour, reason):
    judge = PRMJudge(prm=BrokenPRM(behaviour))
    judge.set_dump_image(dataset.dump_image)
    out = judge.generate(judge.build_prompt(dataset.data.iloc[0], FULL), FULL)
    assert out.startswith(INFER_FAIL_MSG) and reason in out and "broken:prm" in out
    assert vpb.parse_prediction(out, 3, "score") == (None, "inference failed")


def test_prm_judge_only_scores_its_own_prompt(dataset):
    judge = PRMJudge(prm=FakePRM())
    assert judge.use_custom_prompt(FULL) and judge.use_custom_prompt(MINI)
    assert not judge.use_custom_prompt("MMBench_DEV_EN")
    out = judge.generate([dict(type="text", value="What is 2+2?")], "MMBench_DEV_EN")
    assert out.startswith(INFER_FAIL_MSG) and "provides none" in out


def test_visualprm_factory_spec_and_env_override(monkeypatch):
    built = []
    monkeypatch.setattr(prm_judge, "build_scorer", lambda spec, **opts: built.append((spec, opts)) or FakePRM())
    monkeypatch.setattr(prm_judge, "validate_spec", lambda spec, opts: None)  # fake paths (see test_prm_spec.py)
    monkeypatch.delenv(SPEC_ENV, raising=False)
    PRM_MODELS["VisualPRM-8B"]()
    monkeypatch.setenv(SPEC_ENV, "transformers:/models/VisualPRM-8B")
    PRM_MODELS["VisualPRM-8B"](batch_size=2)
    assert built == [("lmdeploy:http://127.0.0.1:23333", {}), ("transformers:/models/VisualPRM-8B", {"batch_size": 2})]


def test_score_predictions_are_validated(dataset):
    assert vpb.parse_prediction("[0.2, 0.9]", 2, "score") == ([0.2, 0.9], "ok")
    assert vpb.parse_prediction("[0.2]", 2, "score") == (None, "invalid scores: 1 for 2 steps")
    assert vpb.parse_prediction("[0.2, 1.5]", 2, "score") == (None, "invalid scores: outside [0, 1]")
    assert vpb.parse_prediction("[0.2, NaN]", 2, "score") == (None, "invalid scores: outside [0, 1]")
    assert vpb.parse_prediction("0.7", 2, "score") == (None, "invalid scores: not a JSON list of numbers")
    assert vpb.parse_prediction(float("nan"), 2, "score") == (None, "inference failed")
    assert vpb.detect_kind(["[0.1, 0.2]", f"{INFER_FAIL_MSG}: x", float("nan")]) == "score"
    assert vpb.detect_kind(["[0.1, 0.2]", "Step 1: +"]) == "critic"
