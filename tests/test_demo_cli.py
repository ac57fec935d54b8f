"""``vlmeval-prm demo`` hands VLMEvalKit the switch that registers the demo models (for its run only)
with ORM scoring on, and reports the run; it first builds the trained shapes models (``--tiny`` needs none).

The real demo runs are tests/test_demo_models.py's (trained) and tests/test_e2e_bon.py's (tiny); here
the build, ``subprocess.call`` and the report are recorded instead of run, and the registration that
switch controls is tested for real in tests/test_hook.py.
"""

import json
import os
import sys

import pytest

from vlmeval_prm.constants import DEMO_ENV, OPTIONS_ENV
from vlmeval_prm.demo import build
from vlmeval_prm.host import cli


@pytest.mark.parametrize(
    "flags, model, data, builds",
    [
        ([], cli.SHAPES_MODEL, cli.SHAPES_DATA, True),
        (["--tiny"], cli.DEMO_MODEL, cli.DEMO_DATA, False),
    ],
)
def test_demo_runs_vlmeval_with_the_demo_switch_for_its_run_only(
    tmp_path, monkeypatch, capsys, flags, model, data, builds
):
    monkeypatch.delenv(DEMO_ENV, raising=False)
    monkeypatch.delenv(OPTIONS_ENV, raising=False)
    built, calls = [], []
    monkeypatch.setattr(build, "ensure_built", lambda: built.append(1) or tmp_path)
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 3)
    rc = cli.main(["demo", *flags, "--work-dir", str(tmp_path)])
    ((cmd, env),) = calls
    assert built == ([1] if builds else [])  # trained models are built (or found cached) before VLMEvalKit starts
    assert cmd[:3] == [sys.executable, "-m", "vlmeval.run"]
    assert cmd[cmd.index("--model") + 1] == model and cmd[cmd.index("--data") + 1] == data
    assert cmd[cmd.index("--work-dir") + 1] == str(tmp_path)
    assert env[DEMO_ENV] == "1" and DEMO_ENV not in os.environ
    assert json.loads(env[OPTIONS_ENV]) == {"orm": True} and OPTIONS_ENV not in os.environ
    assert rc == 3  # no store: the run's own exit code is passed on
    assert f"{DEMO_ENV}=1" in capsys.readouterr().out  # the printed command can be rerun as shown


def test_demo_keeps_the_users_options(tmp_path, monkeypatch):
    monkeypatch.setenv(OPTIONS_ENV, '{"orm": false}')
    calls = []
    monkeypatch.setattr(build, "ensure_built", lambda: tmp_path)
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: calls.append(env) or 3)
    cli.main(["demo", "--tiny", "--work-dir", str(tmp_path)])
    assert calls[0][OPTIONS_ENV] == '{"orm": false}'
