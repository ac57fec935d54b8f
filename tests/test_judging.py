"""Per-candidate correctness from the datasets' own VLMEvalKit ``evaluate()``, and its cache.

Real datasets: the shipped ``VLMEvalPRM_MiniMCQ`` (a VLMEvalKit ``ImageMCQDataset``) and a yes/no
``ImageYORNDataset`` built here from the same rows. Nothing is faked; ``evaluate`` is only counted.
"""

import functools
import os
import types

import pandas as pd
import pytest

from vlmeval_prm.datasets.mini_mcq import MINI_MCQ, VLMEvalPRMMiniMCQ
from vlmeval_prm.report.judging import CACHE_FILE, UnsupportedDataset, judge_candidates, judge_predictions

MODEL = "SomeModel-BoN4"
JUDGE = {"model": "exact_matching", "nproc": 2}


@pytest.fixture(scope="module")
def lmudata(tmp_path_factory):
    root = tmp_path_factory.mktemp("LMUData")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMUData", str(root))
        yield root


@pytest.fixture(scope="module")
def mcq(lmudata):
    return VLMEvalPRMMiniMCQ(MINI_MCQ)


def prediction_table(dataset):
    """What vlmeval.run writes: the dataset rows without images, plus a prediction column."""
    return dataset.data.drop(columns=["image"]).assign(prediction="")


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of a dataset class's real ``evaluate``."""
    calls = []

    def install(cls):
        real = cls.evaluate

        @functools.wraps(real)
        def counted(self, eval_file, **kwargs):
            calls.append(eval_file)
            return real(self, eval_file, **kwargs)

        monkeypatch.setattr(cls, "evaluate", counted)
        return calls

    return install


def other_letter(letter):
    return "ABCD"[("ABCD".index(letter) + 1) % 4]


def mcq_candidates(table):
    """Four candidates per row: right letter, wrong letter, unparseable, and mixed with no text."""
    answers = list(table["answer"])
    right = [f"I count the shapes.\n\nThe answer is {a}." for a in answers]
    wrong = [f"The answer is ({other_letter(a)})" for a in answers]
    unparseable = [
        "The picture is unclear to me, so I cannot decide." if r % 2 else "A or B, maybe C."
        for r in range(len(answers))
    ]
    mixed = [
        None if r % 3 == 0 else (f"Answer: {a}" if r % 3 == 1 else f"Answer: {other_letter(a)}")
        for r, a in enumerate(answers)
    ]
    expected = [
        [True] * len(answers),
        [False] * len(answers),
        [False] * len(answers),
        [None if r % 3 == 0 else r % 3 == 1 for r in range(len(answers))],
    ]
    return [right, wrong, unparseable, mixed], expected


def test_mcq_verdicts_match_expectations_and_vlmevalkit_files(mcq, tmp_path, spy):
    calls = spy(VLMEvalPRMMiniMCQ)
    table = prediction_table(mcq)
    texts, expected = mcq_candidates(table)
    got = judge_candidates(mcq, table, texts, str(tmp_path), MODEL, JUDGE)
    assert got == expected
    assert len(calls) == 4
    # the evaluation ran where VLMEvalKit names prediction files, and wrote its own per-row file
    assert calls[0] == str(tmp_path / "cand_0" / f"{MODEL}_{MINI_MCQ}.xlsx")
    detail = pd.read_excel(tmp_path / "cand_1" / f"{MODEL}_{MINI_MCQ}_exact_matching_result.xlsx")
    assert detail["hit"].sum() == 0 and len(detail) == len(table)


def test_second_judging_costs_no_evaluation(mcq, tmp_path, spy):
    calls = spy(VLMEvalPRMMiniMCQ)
    table = prediction_table(mcq)
    texts, expected = mcq_candidates(table)
    first = judge_candidates(mcq, table, texts, str(tmp_path), MODEL, JUDGE)
    assert len(calls) == 4
    for i in range(4):
        assert (tmp_path / f"cand_{i}" / CACHE_FILE).exists()
    # nproc does not change verdicts: still served from the cache
    again = judge_candidates(mcq, table, texts, str(tmp_path), MODEL, {**JUDGE, "nproc": 1})
    assert again == first == expected
    assert len(calls) == 4


def test_changed_predictions_are_judged_afresh(mcq, tmp_path, spy):
    """VLMEvalKit keeps per-index verdicts in *_result.pkl: stale ones must not be reused."""
    calls = spy(VLMEvalPRMMiniMCQ)
    table = prediction_table(mcq)
    texts, expected = mcq_candidates(table)
    folder = str(tmp_path / "cand_0")
    assert judge_predictions(mcq, table, texts[0], folder, MODEL, JUDGE) == expected[0]
    flipped = list(texts[0])
    flipped[:5] = texts[1][:5]  # first five rows now carry a wrong letter
    assert judge_predictions(mcq, table, flipped, folder, MODEL, JUDGE) == [False] * 5 + [True] * (len(table) - 5)
    assert len(calls) == 2
    # another judge setting is another cache key
    judge_predictions(mcq, table, flipped, folder, MODEL, {**JUDGE, "some_setting": 1})
    assert len(calls) == 3


def test_yes_no_dataset(lmudata, tmp_path, spy):
    from vlmeval.dataset.image_yorn import ImageYORNDataset

    class MiniYesNo(ImageYORNDataset):
        """Yes/no questions on the mini dataset's images: is option A the right count?"""

        DATASET_URL = {"MiniYesNo": ""}

        def load_data(self, dataset):
            rows = VLMEvalPRMMiniMCQ(MINI_MCQ).data.head(12)
            return pd.DataFrame(
                {
                    "index": rows["index"],
                    "image": rows["image"],
                    "question": [f"Is the answer {a}?" for a in rows["A"]],
                    "answer": ["Yes" if x == "A" else "No" for x in rows["answer"]],
                    "category": rows["category"],
                }
            )

    calls = spy(MiniYesNo)
    dataset = MiniYesNo("MiniYesNo")
    table = prediction_table(dataset)
    answers = list(table["answer"])
    right = [f"Looking closely.\n\n{a}, it is." for a in answers]
    wrong = ["No" if a == "Yes" else "Yes" for a in answers]
    unknown = ["Hard to say." for _ in answers]
    got = judge_candidates(dataset, table, [right, wrong, unknown], str(tmp_path), MODEL, JUDGE)
    assert got == [[True] * 12, [False] * 12, [False] * 12]
    assert len(calls) == 3
    judge_candidates(dataset, table, [right, wrong, unknown], str(tmp_path), MODEL, JUDGE)
    assert len(calls) == 3


def test_types_without_per_row_verdicts_are_refused(mcq, tmp_path, spy):
    calls = spy(VLMEvalPRMMiniMCQ)
    table = prediction_table(mcq)
    texts = [["A"] * len(table)]
    free_form = types.SimpleNamespace(TYPE="VQA", dataset_name="SomeVQA", evaluate=None)
    with pytest.raises(UnsupportedDataset, match="type 'VQA'"):
        judge_candidates(free_form, table, texts, str(tmp_path), MODEL, JUDGE)
    circular = types.SimpleNamespace(TYPE="MCQ", dataset_name="MMBench_DEV_EN", evaluate=None)
    with pytest.raises(UnsupportedDataset, match="circular"):
        judge_candidates(circular, table, texts, str(tmp_path), MODEL, JUDGE)
    assert calls == [] and not os.listdir(tmp_path)


def test_evaluate_without_a_per_row_file_is_refused(lmudata, tmp_path):
    class SummaryOnly(VLMEvalPRMMiniMCQ):
        """An MCQ dataset whose evaluate writes only an overall score, as some VLMEvalKit classes do."""

        def evaluate(self, eval_file, **judge_kwargs):
            return {"Overall": 0.0}

    dataset = SummaryOnly(MINI_MCQ)
    table = prediction_table(dataset)
    with pytest.raises(UnsupportedDataset, match="no per-row 'hit'"):
        judge_candidates(dataset, table, [["A"] * len(table)], str(tmp_path), MODEL, JUDGE)


def test_a_registered_benchmark_is_judged_per_answer_beside_the_store(lmudata, tmp_path, spy):
    """MMMU (a ``benchmarks`` entry): no evaluate() per candidate index; one cache beside the store."""
    from vlmeval.dataset import MMMUDataset

    from standins.offline_benchmarks import mmmu_rows, offline_class, write_tsv
    from vlmeval_prm.report.judging import vote_contexts

    write_tsv(lmudata, "MMMU_DEV_VAL", mmmu_rows())
    cls = offline_class(MMMUDataset, "MMMU_DEV_VAL")
    calls = spy(cls)
    dataset = cls("MMMU_DEV_VAL")
    table = prediction_table(dataset)
    answers = list(table["answer"])
    texts = [[f"The answer is {a}" for a in answers], ["The answer is A"] * len(answers)]
    got = judge_candidates(dataset, table, texts, str(tmp_path / "bon_report"), MODEL, JUDGE)
    # VLMEvalKit's MMMU_preproc turns the open question (answer 16) into option A
    assert got == [[True] * len(answers), [a in ("A", "16") for a in answers]]
    assert calls == [] and not (tmp_path / "bon_report").exists()
    assert (tmp_path / f"{MODEL}_MMMU_DEV_VAL_bon_judge.jsonl").exists()
    votes = vote_contexts(dataset, table)
    assert votes[0].choices["B"] == "15 cm" and votes[3].choices == {"A": "16", "B": "Other Answers"}


def test_both_judge_caches_share_one_definition_of_a_verdicts_identity(mcq):
    """The per-index evaluation cache and the per-item judge cache key a verdict by the same judge settings
    (``judge_cache.judge_identity``): transport and credentials never, the judge model always."""
    from vlmeval_prm.report.judge_cache import judge_identity
    from vlmeval_prm.report.judging import cache_key

    base = {"model": "gpt-4o-mini", "temperature": 0}
    transport = {
        "nproc": 8,
        "retry": 3,
        "timeout": 5,
        "wait": 1,
        "verbose": True,
        "key": "sk-x",
        "api_base": "http://h",
    }
    rows, preds = [0, 1], ["A", "B"]
    assert cache_key(mcq, rows, preds, base) == cache_key(mcq, rows, preds, {**base, **transport})
    assert judge_identity(base) == judge_identity({**base, **transport})
    other = {**base, "model": "gpt-4o"}
    assert cache_key(mcq, rows, preds, base) != cache_key(mcq, rows, preds, other)
    assert judge_identity(base) != judge_identity(other)
