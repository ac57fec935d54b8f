"""A Best-of-N config key that neither the wrapper nor the base class takes fails when the model is
built, with a did-you-mean, before any sampling (VLMEvalKit's real classes, not fakes)."""

import json
import os
import subprocess

import pytest
from commands import vlmeval_run_command

from vlmeval_prm.host.bon import BestOfN, _own_keys
from vlmeval_prm.host.config_keys import check_keys, constructor_keys

WRAPPER = _own_keys(BestOfN)


def test_the_wrapper_keys_are_its_constructor_arguments():
    assert {"n", "prm", "prm_options", "temperature", "max_steps", "step_prompt"} <= set(WRAPPER)
    assert "model" not in WRAPPER and "base_kwargs" not in WRAPPER


@pytest.mark.parametrize(
    ("model", "key", "guess"),
    [
        ({"class": "InternVLChat", "model_path": "x"}, "nn", "n"),
        ({"class": "InternVLChat", "model_path": "x"}, "tempreature", "temperature"),
        ({"class": "GPT4V", "model": "gpt-4o"}, "nn", "n"),
        ({"class": "GPT4V", "model": "gpt-4o"}, "prm_option", "prm_options"),
    ],
)
def test_a_typo_is_refused_with_a_did_you_mean(model, key, guess):
    with pytest.raises(ValueError, match=rf"'{key}' \(did you mean '{guess}'\?\)") as info:
        check_keys(model, [key], WRAPPER)
    assert model["class"] in str(info.value)


@pytest.mark.parametrize(
    ("model", "keys"),
    [
        # named constructor arguments; a generation setting a local family hands to generate
        (
            {"class": "InternVLChat", "model_path": "x"},
            ["use_mpo_prompt", "num_beams", "repetition_penalty"],
        ),
        # Qwen2VLChat reads these from its constructor's arguments; use_vllm is VLMEvalKit's own
        ({"class": "Qwen2VLChat", "model_path": "x"}, ["min_pixels", "max_pixels", "use_vllm"]),
        # an API family puts unnamed keys in each request (OpenAI's seed); named ones are fine too
        ({"class": "GPT4V", "model": "gpt-4o"}, ["seed", "img_detail", "max_tokens", "retry"]),
    ],
)
def test_keys_the_base_class_takes_pass(model, keys):
    check_keys(model, keys, WRAPPER)


def test_a_key_a_local_family_cannot_use_is_refused_even_without_a_near_name():
    with pytest.raises(ValueError, match="'zzz_unknown'"):
        check_keys({"class": "InternVLChat", "model_path": "x"}, ["zzz_unknown"], WRAPPER)


def test_keys_read_from_kwargs_in_the_constructor_count_as_named():
    class Family:
        def __init__(self, model_path, **kwargs):
            self.cot = kwargs.pop("use_cot", False)
            self.kwargs = kwargs

    named, takes_kwargs = constructor_keys(Family)
    assert named == {"model_path", "use_cot"} and takes_kwargs


@pytest.mark.e2e
def test_the_nn_config_fails_before_any_sampling(tmp_path):
    config = {
        "model": {
            "TinyBoN": {"class": "BestOfN", "model": "VLMEvalPRM-TinyPolicy", "nn": 4, "prm": "transformers:tiny:prm"}
        },
        "data": {"VLMEvalPRM_MiniMCQ": {"class": "ImageMCQDataset", "dataset": "VLMEvalPRM_MiniMCQ"}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = subprocess.run(
        vlmeval_run_command(["--config", str(path)], tmp_path / "out"),
        env={**os.environ, "VLMEVAL_PRM_DEMO": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode != 0
    assert "'nn' (did you mean 'n'?)" in out.stdout + out.stderr
    assert not list((tmp_path / "out").rglob("*_bon_candidates.jsonl"))  # nothing was sampled
