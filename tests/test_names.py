"""Names this plugin owns that cannot be built (an unknown base, a demo name without its switch, an N
that is not registered) stop ``python -m vlmeval.run`` before any work, exit 2, with a message that
says which case it is and what to do. Names that are not ours stay VLMEvalKit's business."""

import json
import os
import subprocess
import sys
from functools import partial

import pytest
from commands import vlmeval_run_command

from vlmeval_prm.constants import DEMO_ENV, OPTIONS_ENV
from vlmeval_prm.host import plugin
from vlmeval_prm.host.plugin import (
    BON_SIZES,
    RefuseToBuild,
    _dash_m_module,
    is_run_main,
    name_problem,
    requested_names,
)

#: A small ``supported_VLM`` as registration leaves it without the demo switch.
BASES = ["InternVL2_5-8B", "InternVL2_5-38B", "GPT4o", "Qwen2.5-VL-7B-Instruct"]
REGISTRY = {
    **{b: object() for b in BASES},
    "VisualPRM-8B": object(),
    **{f"{b}-BoN{n}": object() for b in BASES for n in BON_SIZES},
}


@pytest.fixture
def no_demo(monkeypatch):
    monkeypatch.delenv(DEMO_ENV, raising=False)


def test_registered_names_and_names_not_ours_have_no_problem(no_demo):
    for name in ("InternVL2_5-8B-BoN8", "GPT4o", "NoSuchModel", "InternVL2_5-8B-BoN-8"):
        assert name_problem(name, REGISTRY) is None, name


def test_unknown_base_names_the_listing_and_a_near_name(no_demo):
    why = name_problem("NoSuchModel-BoN8", REGISTRY)
    assert "'NoSuchModel' is not a model in VLMEvalKit's supported_VLM" in why
    assert "`vlmeval-prm models`" in why
    why = name_problem("InternVL2_5-8b-BoN8", REGISTRY)  # case-blind: the one exact match only
    assert "Did you mean 'InternVL2_5-8B-BoN8'?" in why
    why = name_problem("InternVL25-8B-BoN8", REGISTRY)
    assert "'InternVL2_5-8B-BoN8'" in why


def test_demo_name_without_the_switch_names_the_switch(no_demo):
    for name in ("VLMEvalPRM-TinyPolicy-BoN4", "VLMEvalPRM-ShapesPolicy-BoN8", "VLMEvalPRM-TinyPolicy"):
        why = name_problem(name, REGISTRY)
        assert f"{DEMO_ENV}=1" in why and "vlmeval-prm demo" in why, why
    assert "Did you mean 'VLMEvalPRM-TinyPolicy'" in name_problem("VLMEvalPRM-TinyPolicyy", REGISTRY)


def test_n_out_of_range_names_the_sizes_and_the_config_route(no_demo):
    why = name_problem("InternVL2_5-8B-BoN7", REGISTRY)
    assert "N=7 is not a registered size" in why and "2, 4, 8, 16, 32, 64" in why
    entry = json.loads(why[why.index('{"InternVL2_5-8B-BoN7"') : why.index(', "data"')])
    assert entry == {"InternVL2_5-8B-BoN7": {"class": "BestOfN", "model": "InternVL2_5-8B", "n": 7}}
    both = name_problem("NoSuchModel-BoN7", REGISTRY)  # both problems; no config entry for an unknown base
    assert "'NoSuchModel' is not a model" in both and "N=7" in both and "--config" not in both


def test_other_cases(no_demo):
    assert "is a PRM, not a policy" in name_problem("VisualPRM-8B-BoN8", REGISTRY)
    assert "Did you mean 'GPT4o-BoN8'" in name_problem("GPT4o-bon8", REGISTRY)
    refused = {"GPT4o-BoN4": partial(RefuseToBuild(f"{OPTIONS_ENV} is not valid JSON"), model="GPT4o")}
    assert name_problem("GPT4o-BoN4", refused) == f"{OPTIONS_ENV} is not valid JSON"


def test_the_demo_switch_makes_demo_names_fine_to_miss_only_for_n(monkeypatch):
    monkeypatch.setenv(DEMO_ENV, "1")
    registry = {**REGISTRY, plugin.TINY_POLICY: object(), f"{plugin.TINY_POLICY}-BoN4": object()}
    assert name_problem(f"{plugin.TINY_POLICY}-BoN4", registry) is None
    why = name_problem(f"{plugin.TINY_POLICY}-BoN5", registry)
    assert "N=5" in why and DEMO_ENV not in why


def test_requested_names_reads_the_command_line_as_run_py_does(tmp_path):
    assert requested_names(["--model", "A-BoN8", "B", "--data", "D", "--mode", "infer"]) == ["A-BoN8", "B"]
    assert requested_names(["--data", "D", "--model=A-BoN8"]) == ["A-BoN8"]
    assert requested_names(["--model", "A-BoN8", "--data", "D", "--mode", "eval"]) == []  # reads predictions
    assert requested_names(["--model", "A-BoN8", "--base-url", "http://x/v1"]) == []  # the server's name
    assert requested_names(["--data", "D"]) == []
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"X-BoN8": {}, "Mine": {"class": "BestOfN", "model": "GPT4o"}}, "data": {}}))
    assert requested_names(["--config", str(cfg)]) == ["X-BoN8"]  # an entry with a class is no lookup
    assert requested_names(["--config", str(tmp_path / "missing.json")]) == []


def test_only_vlmeval_run_is_checked():
    assert _dash_m_module(["python", "-u", "-m", "vlmeval.run", "--model", "x"]) == "vlmeval.run"
    assert _dash_m_module(["python", "-X", "utf8", "-mvlmeval.run"]) == "vlmeval.run"
    assert _dash_m_module(["python", "run.py", "-m", "vlmeval.run"]) is None
    assert _dash_m_module(["python", "-c", "import vlmeval", "-m", "vlmeval.run"]) is None
    assert not is_run_main()  # pytest


# ------------------------------------------------------------------------------- end to end


def vlmeval_run(tmp_path, model, **env):
    base = {k: v for k, v in os.environ.items() if k not in (DEMO_ENV, OPTIONS_ENV)}
    return subprocess.run(
        vlmeval_run_command(["--model", model, "--data", "VLMEvalPRM_MiniMCQ"], tmp_path / "outputs"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**base, "LMUData": str(tmp_path / "LMUData"), **env},
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    "model, says",
    [
        ("NoSuchModel-BoN8", ["'NoSuchModel' is not a model in VLMEvalKit's supported_VLM", "vlmeval-prm models"]),
        ("VLMEvalPRM-TinyPolicy-BoN4", [f"{DEMO_ENV}=1"]),
        ("VLMEvalPRM-ShapesPolicy-BoN8", [f"{DEMO_ENV}=1"]),
        ("InternVL2_5-8B-BoN7", ["N=7 is not a registered size", '"class": "BestOfN", "model": "InternVL2_5-8B"']),
    ],
)
def test_vlmeval_run_stops_before_any_work(tmp_path, model, says):
    out = vlmeval_run(tmp_path, model)
    log = out.stdout + out.stderr
    assert out.returncode == 2, log[-3000:]
    assert f"cannot run model {model}:" in log, log[-3000:]
    for text in says:
        assert text in log, log[-3000:]
    assert "Traceback" not in log and "KeyError" not in log, log[-3000:]
    assert not (tmp_path / "outputs").exists()  # nothing run: no work dir, no run files


@pytest.mark.e2e
def test_a_process_that_only_imports_vlmeval_is_never_stopped(tmp_path):
    """The same command line in a process that is not run.py (a notebook, a tool, the tests)."""
    code = "import sys; sys.argv[1:] = ['--model', 'NoSuchModel-BoN8']; import vlmeval.config; print('alive')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith("alive"), out.stderr[-3000:]
