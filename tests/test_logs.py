"""Our log lines show where the user looks: under ``python -m vlmeval.run`` through VLMEvalKit's own
logger set-up, elsewhere on stderr; never twice."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from commands import vlmeval_run_command

from vlmeval_prm.constants import DEMO_ENV, OPTIONS_ENV, SPEC_ENV
from vlmeval_prm.logs import ROOT, get_logger


def run_py(code: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_module_loggers_live_under_vlmevalkits_root_logger():
    assert ROOT == "vlmeval.vlmeval_prm"
    assert get_logger("vlmeval_prm.prm.http").name == "vlmeval.vlmeval_prm.prm.http"
    assert get_logger("vlmeval_prm").name == ROOT


def test_without_vlmeval_info_lines_go_to_stderr_once():
    out = run_py("""
        import sys
        from vlmeval_prm.logs import get_logger
        get_logger("vlmeval_prm.demo").info("hello %s", "there")
        assert "vlmeval" not in sys.modules  # logging never imports vlmeval
    """)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "hello there" in ln]
    assert len(lines) == 1 and "INFO - vlmeval.vlmeval_prm.demo: hello there" in lines[0], out.stderr


def test_after_vlmevalkits_setup_logger_lines_reach_its_console_and_log_file_once(tmp_path):
    """What ``python -m vlmeval.run`` does on every rank: ``setup_logger`` (vlmeval/smp/log.py) before
    inference. Before it, VLMEvalKit's import-time ``logging.basicConfig`` prints our lines, once."""
    out = run_py(f"""
        from vlmeval_prm.logs import get_logger
        log = get_logger("vlmeval_prm.prm.http")
        from vlmeval.smp import setup_logger
        log.info("before set-up")
        setup_logger(log_file={str(tmp_path / "run.log")!r})
        log.info("waiting for the server")
        log.debug("not at INFO")
    """)
    assert out.returncode == 0, out.stderr
    both = out.stdout + out.stderr
    assert both.count("before set-up") == 1, both
    assert out.stdout.count("waiting for the server") == 1 and "waiting for the server" not in out.stderr, both
    log_file = (tmp_path / "run.log").read_text()
    assert log_file.count("INFO - vlmeval.vlmeval_prm.prm.http: waiting for the server") == 1, log_file
    assert "not at INFO" not in both + log_file


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_vlmeval_run_shows_the_wait_for_an_unreachable_prm_and_the_failure(tmp_path, tiny_paths):
    """The real ``python -m vlmeval.run``, Best-of-2 with the tiny policy against a PRM URL nothing
    listens on: the wait line names the URL, then the failure after the (short) startup timeout."""
    url = f"http://127.0.0.1:{closed_port()}"
    (tmp_path / "LMUData").mkdir()
    env = {
        **os.environ,
        DEMO_ENV: "1",
        SPEC_ENV: f"lmdeploy:{url}",
        "LMUData": str(tmp_path / "LMUData"),
        OPTIONS_ENV: json.dumps({"prm_options": {"startup_timeout": 2}}),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = vlmeval_run_command(
        ["--model", "VLMEvalPRM-TinyPolicy-BoN2", "--data", "VLMEvalPRM_MiniMCQ"], tmp_path / "outputs"
    )
    out = subprocess.run(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    ).stdout
    waits = [ln for ln in out.splitlines() if f"waiting for the LMDeploy server at {url}" in ln]
    assert waits and "INFO - vlmeval.vlmeval_prm.prm.http" in waits[0], out[-4000:]
    assert f"LMDeploy server at {url} is not healthy after 2s" in out, out[-4000:]
    log_files = list((tmp_path / "outputs" / "logs").glob("*.log"))  # VLMEvalKit's own run log has it too
    assert any(f"waiting for the LMDeploy server at {url}" in p.read_text() for p in log_files), log_files
