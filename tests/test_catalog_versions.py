"""``vlmeval-prm models``: a family whose sampling depends on the transformers line says so for the
installed version (``transformers`` in the JSON), from one table (``policy.catalog.TRANSFORMERS_FACTS``).

The verdict is a function of the version, so both lines are tested here by passing it; the LLaVA_Next
fact itself is reproduced on whichever line runs this file (.ci/run runs it on 4.57.x and 5.x).
"""

import functools
import json

import pytest
import transformers
import vlmeval.vlm
from vlmeval.config import supported_VLM

from vlmeval_prm.host.cli import main
from vlmeval_prm.policy import catalog
from vlmeval_prm.policy.catalog import (
    LineVerdict,
    TransformersFact,
    factory_spec,
    model_routes,
    transformers_line,
    transformers_verdict,
)

LINES = {"4.57.x": "4.57.6", "5.x": "5.25.0"}


def spec(cls, model_path):
    return factory_spec(functools.partial(cls, model_path=model_path))


@pytest.mark.parametrize(
    "version, line",
    [("4.57.6", "4.57.x"), ("4.57.0.dev0", "4.57.x"), ("5.0.0", "5.x"), ("5.25.0", "5.x"), ("4.56.2", None)],
)
def test_versions_map_to_the_measured_lines(version, line):
    assert transformers_line(version) == line


@pytest.mark.parametrize("line, version", LINES.items())
def test_llava_next_fails_on_every_supported_line_and_says_what_works(line, version):
    rec = transformers_verdict(spec(vlmeval.vlm.LLaVA_Next, "llava-hf/llava-v1.6-vicuna-7b-hf"), version)
    assert rec["installed"] == version and rec["line"] == line and rec["works"] is False
    assert "processor(prompt, images)" in rec["why"]
    assert "no line this project supports" in rec["needs"]


@pytest.mark.parametrize("line, version", LINES.items())
def test_internlm2_internvl_samples_only_with_the_plugins_repair(line, version):
    for path in ("OpenGVLab/InternVL2_5-8B", "OpenGVLab/InternVL2-8B-MPO", "OpenGVLab/InternVL2_5-26B"):
        rec = transformers_verdict(spec(vlmeval.vlm.InternVLChat, path), version)
        assert rec["works"] is True and "GenerationMixin" in rec["repair"] and "needs" not in rec, path
    rope = (
        "RoPE buffers"
        in transformers_verdict(spec(vlmeval.vlm.InternVLChat, "OpenGVLab/InternVL2_5-8B"), version)["why"]
    )
    assert rope  # both lines name the buffers: broken on 5.x, loading correctly on 4.57.x


@pytest.mark.parametrize("version", [*LINES.values(), "4.56.2"])
def test_families_whose_sampling_does_not_depend_on_the_line_get_no_verdict(version):
    for path in ("OpenGVLab/InternVL2_5-4B", "OpenGVLab/InternVL3-8B", "OpenGVLab/InternVL2_5-1B"):  # Qwen2 LMs
        assert transformers_verdict(spec(vlmeval.vlm.InternVLChat, path), version) is None, path
    assert transformers_verdict(spec(vlmeval.vlm.Qwen2VLChat, "Qwen/Qwen2-VL-2B-Instruct"), version) is None


def test_an_unmeasured_line_is_unknown_not_fine():
    rec = transformers_verdict(spec(vlmeval.vlm.LLaVA_Next, "llava-hf/llava-v1.6-vicuna-7b-hf"), "4.56.2")
    assert rec["works"] is None and rec["line"] is None and "not measured" in rec["why"]


def test_a_family_that_works_on_one_line_names_that_line_on_the_other(monkeypatch):
    fact = TransformersFact(
        family="stand-in",
        cls="LLaVA_Next",
        lines={"4.57.x": LineVerdict(True, "fine"), "5.x": LineVerdict(False, "broken on 5")},
    )
    monkeypatch.setattr(catalog, "TRANSFORMERS_FACTS", (fact,))
    s = spec(vlmeval.vlm.LLaVA_Next, "llava-hf/llava-v1.6-vicuna-7b-hf")
    assert transformers_verdict(s, "5.25.0") == {
        "installed": "5.25.0",
        "line": "5.x",
        "works": False,
        "why": "broken on 5",
        "needs": "transformers 4.57.x",
        "family": "stand-in",
    }
    assert transformers_verdict(s, "4.57.6") == {
        "installed": "4.57.6",
        "line": "4.57.x",
        "works": True,
        "why": "fine",
        "family": "stand-in",
    }


#: A few names of each kind (model_routes over all ~550 names takes ~10 s on 2 cores).
SOME = ("llava_next_vicuna_7b", "llava_next_interleave_7b", "InternVL2_5-8B", "InternVL2_5-4B", "Qwen2-VL-2B-Instruct")


def test_the_listing_carries_the_verdict_for_the_installed_version(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    llava = [r for r in rows.values() if r["class"] == "LLaVA_Next"]
    assert llava and all(r["transformers"]["installed"] == transformers.__version__ for r in llava)
    assert all(r["transformers"]["works"] is False for r in llava)
    assert rows["InternVL2_5-8B"]["transformers"]["works"] is True
    assert "transformers" not in rows["InternVL2_5-4B"] and "transformers" not in rows["Qwen2-VL-2B-Instruct"]
    with_verdict = {r["class"] for r in rows.values() if "transformers" in r}
    assert with_verdict == {"LLaVA_Next", "InternVLChat"}


@pytest.mark.parametrize("version", LINES.values())
def test_passing_a_version_decides_the_verdict_of_every_row(version):
    rows = {r.name: r for r in model_routes({n: supported_VLM[n] for n in SOME}, transformers_version=version)}
    assert {n for n, r in rows.items() if r.transformers} == {
        "llava_next_vicuna_7b",
        "llava_next_interleave_7b",
        "InternVL2_5-8B",
    }
    assert all(r.transformers["installed"] == version for r in rows.values() if r.transformers)


def test_no_version_no_verdicts():
    assert all(
        r.transformers is None for r in model_routes({n: supported_VLM[n] for n in SOME}, transformers_version=None)
    )


def test_the_table_listing_marks_the_failing_names(capsys, monkeypatch):
    subset = {n: supported_VLM[n] for n in SOME}
    monkeypatch.setattr(catalog, "model_routes", lambda _all, **kw: model_routes(subset, **kw))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("llava_next_vicuna_7b "))
    assert f"[transformers {transformers.__version__}: FAILS" in line
    assert "repaired by the plugin]" in next(ln for ln in out.splitlines() if ln.startswith("InternVL2_5-8B "))
    assert "[" not in next(ln for ln in out.splitlines() if ln.startswith("InternVL2_5-4B "))
    assert out.splitlines()[-1].endswith(
        f"2 of them not with the installed transformers {transformers.__version__} (FAILS above)"
    )


def test_llava_next_processor_call_fails_on_this_line_as_the_table_says(tmp_path):
    """VLMEvalKit's call, ``processor(prompt, images, return_tensors="pt")``, on a LlavaNextProcessor of
    the installed transformers: the prompt lands in ``images``. The same inputs by keyword work, so it
    is the argument order that fails, not the stand-in processor."""
    from PIL import Image
    from tokenizers import Tokenizer, models
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor, PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<|im_end|>": 1, "<|endoftext|>": 2}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
        unk_token="[UNK]",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tok.add_tokens(["<image>"], special_tokens=True)
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=[[28, 28]]
        ),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
    )
    prompt, images = "USER: <image>\nWhat is it? ASSISTANT:", [Image.new("RGB", (40, 30), "red")]
    assert processor(images=images, text=prompt, return_tensors="pt")["pixel_values"].shape[0] == 1
    with pytest.raises(Exception) as err:
        processor(prompt, images, return_tensors="pt")
    assert "image" in str(err.value).lower()
    rec = transformers_verdict(
        spec(vlmeval.vlm.LLaVA_Next, "llava-hf/llava-v1.6-vicuna-7b-hf"), transformers.__version__
    )
    assert rec["works"] is False
