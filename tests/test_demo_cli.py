"""``vlmeval-prm demo`` hands VLMEvalKit the switch that registers the tiny models, for its run only.

The run itself is the one tests/test_e2e_bon.py makes (1-3 min); here ``subprocess.call`` records
what the demo would start instead of starting it, and the registration that switch controls is
tested for real in tests/test_hook.py.
"""

import os
import sys

from vlmeval_prm.constants import DEMO_ENV
from vlmeval_prm.host import cli


def test_demo_runs_vlmeval_with_the_demo_switch_for_its_run_only(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(DEMO_ENV, raising=False)
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 3)
    rc = cli.main(["demo", "--work-dir", str(tmp_path)])
    ((cmd, env),) = calls
    assert cmd[:3] == [sys.executable, "-m", "vlmeval.run"]
    assert cmd[cmd.index("--model") + 1] == cli.DEMO_MODEL and cmd[cmd.index("--work-dir") + 1] == str(tmp_path)
    assert env[DEMO_ENV] == "1" and DEMO_ENV not in os.environ
    assert rc == 3  # no store: the run's own exit code is passed on
    assert f"{DEMO_ENV}=1" in capsys.readouterr().out  # the printed command can be rerun as shown
