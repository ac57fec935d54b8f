"""The ``ursa-rm`` format (URSA-RM-8B) against its published scoring code: URSA-MATH/URSA-MATH
c4e30ff78802b90054a74ae74f3c2e9fac12aa4a, ``inference/prm_infer_score.py`` (``PROMPT``, ``prepare_input``,
``replace_specific_plus_minus_with_ki``, ``single_inference``) and ``models/ursa_model/modeling_ursa.py``
(``UrsaForTokenClassification``).

Neither the checkpoint nor URSA's package can be downloaded here: tests/standins/ursa_package.py writes a
package of the same name and shape and a tiny checkpoint it loads (16 image features where URSA has 576).
The tagged texts below are what URSA's tagger returned for these inputs (run verbatim on them when this
format was written).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from standins.ursa_package import FEATURES, write_checkpoint, write_package
from vlmeval_prm.prm import validate_spec
from vlmeval_prm.prm.formats import build_format
from vlmeval_prm.prm.formats.ursa_rm import URSA_PROMPT
from vlmeval_prm.prm.hf_backend import TransformersPRM

QUESTION = "How many circles are there?"
#: Scores of the stand-in from the reference recipe below (transformers 5.25; the same on 4.57.6).
GOLDEN = {1: [0.31713423, 0.14573246, 0.40218142], 2: [0.62192243, 0.43527108, 0.54301268]}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    root = write_package(tmp_path_factory.mktemp("ursa_package"))
    sys.path.insert(0, root)
    yield root
    sys.path.remove(root)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, package):
    return write_checkpoint(tmp_path_factory.mktemp("ursa_rm"), package)


@pytest.fixture(scope="module")
def prm(checkpoint):
    return TransformersPRM(checkpoint)  # the format from its config.json: model_type "ursa"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img")
    red, tall = folder / "red.png", folder / "tall.png"
    Image.new("RGB", (90, 70), (200, 30, 30)).save(red)
    img = Image.new("RGB", (30, 64))
    img.putdata([((x * 7) % 256, (y * 11) % 256, 90) for y in range(64) for x in range(30)])
    img.save(tall)
    return [str(red), str(tall)]


#: response -> what URSA's tagger made of PROMPT + "Q?" + "\n" + response, after "Question:".
TAGGED = {
    "Step 1: a.\nStep 2: b.\n†Answer: 3": "Q?\nStep 1: a. и\nStep 2: b. и\n†Answer: 3",
    "Step 1: a. Step 2: b. †Answer: 3": "Q?\nStep 1: a. и Step 2: b. и †Answer: 3",
    "Just an answer 3": "Q?\nJust an answer 3 и",
    "Step 1: a.\tStep 2: b.\t†Answer: 3": "Q?\nStep 1: a.\t иStep 2: b.\t и†Answer: 3",
    "Step 1:Step 2: b.\n†Answer: 3": "Q?\nStep 1:Step 2: b. и\n†Answer: 3",
    "Step 1: x\n\ny.\n\nStep 2: z.\n\n†Answer: 3": "Q?\nStep 1: x\n\ny. и\n\nStep 2: z. и\n\n†Answer: 3",
}


@pytest.mark.parametrize("response", list(TAGGED))
def test_steps_are_tagged_where_ursas_tagger_tags_them(response):
    fmt = build_format("ursa-rm")
    steps = fmt.split(response, 12)
    assert "".join(steps) == response  # nothing of the response is lost or rewritten
    (user,) = [m for m in fmt.text_messages("Q?", steps, 1) if m["role"] == "user"]
    assert user["content"] == "<|image|>" + URSA_PROMPT + TAGGED[response]
    assert user["content"].count(" и") == len(steps)  # one score per step


def test_where_the_format_departs_from_ursas_tagger():
    """Documented in the format: without a †Answer line URSA leaves the last step unscored, this format
    scores it; a benchmark's stripped steps are joined by line breaks."""
    fmt = build_format("ursa-rm")
    steps = fmt.split("Step 1: a.\n\nStep 2: b.\n\nThe answer is 3", 12)
    assert fmt.tagged(steps) == "Step 1: a. и\n\nStep 2: b.\n\nThe answer is 3 и"  # URSA: no second tag
    assert fmt.tagged(["First.", "Second."]) == "First. и\nSecond. и"


def test_golden_prompt(prm):
    """single_inference: a system turn, one user turn opening with <|image|>, the generation prompt."""
    steps = ["Step 1: a.\n", "Step 2: b.\n†Answer: 3"]
    assert prm.render(QUESTION, steps, 1) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|image|>"
        f"{URSA_PROMPT}{QUESTION}\nStep 1: a. и\nStep 2: b. и\n†Answer: 3<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prm.fmt.name == "ursa-rm" and prm.batch_size == 1


def reference_scores(prm, images: list[str], steps: list[str]) -> list[float]:
    """single_inference's recipe: the chat template with the generation prompt, the processor on the prompt
    and the images, one forward, the head at every token equal to encode(' и')[0] after re-aligning the ids
    with the merged sequence (URSA inserts 575 dummy ids after position 0 for its one image; here
    FEATURES - 1 after each image token, which is the same for one image at the start), then sigmoid."""
    processor, model = prm.inputs.processor, prm.model
    instruction = URSA_PROMPT + QUESTION + "\n" + prm.fmt.tagged(steps)
    conv = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "<|image|>" * len(images) + instruction},
    ]
    prompt = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    inputs = processor(prompt, [Image.open(p).convert("RGB") for p in images], return_tensors="pt")
    tag_id = processor.tokenizer.encode(" и", add_special_tokens=False)[0]
    with torch.no_grad():
        reward = model(**inputs).logits.view(-1)
    ids = []
    for token in inputs["input_ids"].view(-1).tolist():
        ids.append(token)
        if token == model.config.image_token_index:
            ids += [-1] * (FEATURES - 1)
    return torch.sigmoid(reward[torch.tensor(ids) == tag_id]).tolist()


@pytest.mark.parametrize("n_images", [1, 2])
def test_scores_equal_single_inference(prm, images, n_images):
    solutions = [
        ["Step 1: a.\n", "Step 2: b.\n", "Step 3: c.\n†Answer: 3"],
        ["Step 1: no.\n", "Step 2: 4.\n†Answer: 4"],
    ]
    got = prm.score(QUESTION, images[:n_images], solutions)
    for res, steps in zip(got, solutions):
        assert res.ok, res.error
        assert res.scores == pytest.approx(reference_scores(prm, images[:n_images], steps), abs=1e-6)
    assert got[0].scores == pytest.approx(GOLDEN[n_images], abs=1e-5)
    assert len({round(s, 4) for s in got[0].scores}) == 3  # every step read at its own tag


def test_the_images_reach_the_scores(prm, images):
    steps = [["Step 1: a.\n", "Step 2: b.\n†Answer: 3"]]
    one, two, none = (prm.score(QUESTION, images[:k], steps)[0].scores for k in (1, 2, 0))
    assert one != pytest.approx(two, abs=1e-4) and one != pytest.approx(none, abs=1e-4)


def test_the_package_must_import_and_says_how(checkpoint):
    with pytest.raises(ValueError, match=r"ursa-rm format loads .* own package \(no_such_pkg\).*PYTHONPATH"):
        validate_spec(f"transformers:{checkpoint}", {"code": "no_such_pkg"})
    with pytest.raises(ValueError, match="the code option names a model package; the visualprm format loads none"):
        validate_spec(f"transformers:{checkpoint}", {"format": "visualprm", "code": "ursa_model"})


def test_check_prm_passes_and_names_the_package(checkpoint, capsys):
    from vlmeval_prm.host import cli

    assert cli.main(["check-prm", f"transformers:{checkpoint}"]) == 0
    out = capsys.readouterr().out
    assert "UrsaForTokenClassification (the package ursa_model.modeling_ursa) loaded" in out
    assert "the ursa-rm format reads its sigmoid head at each ' и'" in out and "sigmoid(head) per step" in out


@pytest.mark.e2e
def test_visualprocessbench_with_an_ursa_rm_prm_through_vlmeval_run(tmp_path, monkeypatch, package, checkpoint, prm):
    """``python -m vlmeval.run --config`` (or a checkout's run.py): the stand-in URSA-RM as a ``PRMJudge`` on the
    fixture release of VisualProcessBench; its format comes from its config.json, its package from
    PYTHONPATH. Every prediction equals this process's scores of the same steps and images."""
    from commands import one_output, vlmeval_run_command

    from vlmeval_prm.constants import DEMO_ENV

    release = os.path.join(os.path.dirname(__file__), "fixtures", "visualprocessbench")
    config = {
        "model": {"URSA-RM": {"class": "PRMJudge", "prm": f"transformers:{checkpoint}"}},
        "data": {"VisualProcessBench": {"class": "VisualProcessBench", "dataset": "VisualProcessBench"}},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "LMUData").mkdir()
    env = {
        **os.environ,
        "LMUData": str(tmp_path / "LMUData"),
        "VISUALPROCESSBENCH_ROOT": release,
        DEMO_ENV: "1",
        "PYTHONPATH": os.pathsep.join([package, os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        vlmeval_run_command(["--config", str(tmp_path / "config.json")], tmp_path / "outputs", judge=None),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    import pandas as pd

    from vlmeval_prm.datasets.visualprocessbench import VisualProcessBench

    folder = tmp_path / "outputs" / "URSA-RM"
    pred = pd.read_excel(one_output(folder, "URSA-RM_VisualProcessBench.xlsx"))
    metrics = pd.read_csv(one_output(folder, "URSA-RM_VisualProcessBench_metrics.csv"))
    assert metrics.iloc[:, 0].astype(str).str.contains("Overall").any() and metrics["failed"].sum() == 0
    monkeypatch.setenv("LMUData", str(tmp_path / "LMUData"))
    dataset = VisualProcessBench("VisualProcessBench")
    assert len(pred) == len(dataset.data) == 8
    for _, line in dataset.data.iterrows():
        expected = prm.score(str(line["question"]), dataset.dump_image(line), [json.loads(line["steps"])])[0]
        got = pred.loc[pred["index"] == line["index"], "prediction"].iloc[0]
        assert json.loads(got) == pytest.approx(expected.scores, abs=1e-5)
