"""The CLI finds the host's run entry point: ms-vlmeval's ``vlmeval.run`` module, or a VLMEvalKit checkout's
``run.py`` (upstream has no ``vlmeval.run``), named or found beside the installed package; a clear error
otherwise, before any work."""

import importlib.machinery
import os
import subprocess
import sys

import pytest
from commands import HOST, checkout_of_installed

from vlmeval_prm.host import cli, runner
from vlmeval_prm.host.runner import HostNotFound, find_host


def test_the_installed_host_runs_with_this_interpreter():
    assert HOST.command()[0] == sys.executable
    if HOST.kind == "module":  # ms-vlmeval
        assert HOST.command() == [sys.executable, "-m", "vlmeval.run"] and HOST.accepts("--limit")
    else:  # an upstream checkout: its run.py, which has no --limit
        assert HOST.path.endswith("run.py") and not HOST.accepts("--limit")
    assert HOST.accepts("--work-dir") and not HOST.accepts("--no-such-flag")
    assert callable(HOST.load().build_model_from_config)


def test_a_named_checkout_is_used_by_argument_or_environment(tmp_path, monkeypatch):
    root = checkout_of_installed(tmp_path / "VLMEvalKit")
    script = runner.Host("script", str(root / "run.py"))
    assert find_host(root) == script and script.command() == [sys.executable, str(root / "run.py")]
    monkeypatch.setenv(runner.ROOT_ENV, str(root))
    assert find_host() == script


def test_a_folder_that_is_not_a_checkout_is_refused_by_name(tmp_path, monkeypatch):
    with pytest.raises(HostNotFound, match=rf"{tmp_path}.*--vlmevalkit-root.*no run.py next to a vlmeval/ folder"):
        find_host(tmp_path)
    monkeypatch.setenv(runner.ROOT_ENV, str(tmp_path))
    with pytest.raises(HostNotFound, match=r"\$VLMEVALKIT_ROOT"):
        find_host()


def _installed_at(monkeypatch, package):
    """Make ``vlmeval`` look installed from ``package`` (an editable checkout's package folder)."""
    spec = importlib.machinery.ModuleSpec("vlmeval", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    monkeypatch.setattr(runner.importlib.util, "find_spec", lambda name: spec if name == "vlmeval" else None)


def test_an_editable_checkout_is_found_beside_the_installed_package(tmp_path, monkeypatch):
    (tmp_path / "vlmeval").mkdir()
    (tmp_path / "run.py").write_text("")
    _installed_at(monkeypatch, tmp_path / "vlmeval")
    assert find_host() == runner.Host("script", str(tmp_path / "run.py"))


def test_neither_entry_point_is_an_error_that_says_where_it_looked(tmp_path, monkeypatch):
    (tmp_path / "vlmeval").mkdir()
    _installed_at(monkeypatch, tmp_path / "vlmeval")
    with pytest.raises(HostNotFound) as err:
        find_host()
    message = str(err.value)
    assert f"vlmeval.run ({tmp_path / 'vlmeval' / 'run.py'})" in message
    assert f"run.py next to the package ({tmp_path / 'run.py'})" in message
    assert "VLMEVALKIT_ROOT" in message and "--vlmevalkit-root" in message


def test_demo_with_a_bad_root_stops_before_building_anything(tmp_path, monkeypatch, capsys):
    from vlmeval_prm.demo import build

    monkeypatch.setattr(build, "ensure_built", lambda: pytest.fail("built the demo models"))
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: pytest.fail("launched a run"))
    assert cli.main(["demo", "--vlmevalkit-root", str(tmp_path)]) == 2
    assert f"{tmp_path} (from --vlmevalkit-root) is not a VLMEvalKit checkout" in capsys.readouterr().err


def test_serve_config_with_a_bad_root_is_refused_before_loading(tmp_path):
    cfg = tmp_path / "bon.json"
    cfg.write_text('{"model": {"MyBoN": {"class": "BestOfN", "model": "X", "n": 2}}}')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlmeval_prm.host.cli",
            "serve",
            "--config",
            str(cfg),
            "--vlmevalkit-root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "is not a VLMEvalKit checkout" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.e2e
def test_demo_tiny_runs_through_a_checkouts_run_py(tmp_path, tiny_paths):
    """``vlmeval-prm demo --tiny`` launched through a checkout's run.py (``python <root>/run.py``, as upstream
    VLMEvalKit is run): Best-of-N, the store and the report, exit 0."""
    root = checkout_of_installed(tmp_path / "VLMEvalKit")
    env = {**os.environ, "LMUData": str(tmp_path / "LMUData"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "vlmeval_prm.host.cli", "demo", "--tiny", "--vlmevalkit-root", str(root)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (
        f"running: VLMEVAL_PRM_DEMO=1 VLMEVAL_PRM_OPTIONS='{{\"orm\": true}}' {sys.executable} {root / 'run.py'}"
        in (proc.stdout)
    )
    assert "36 samples, 144 candidates, 144 scored step by step" in proc.stdout
    assert "prm_product" in proc.stdout and "oracle" in proc.stdout  # the report's table


def test_the_report_finds_predictions_in_the_newest_run_folder(tmp_path):
    """Upstream run.py writes <work_dir>/<model>/<eval_id>/ and links the files into <model>/ only once it has
    evaluated: after ``--mode infer`` (or in ``--api-mode``) the report looks in the newest run folder."""
    from vlmeval_prm.report.collect import ReportError, prediction_file

    model = tmp_path / "M"
    with pytest.raises(ReportError, match="no prediction file"):
        prediction_file(str(tmp_path), "M", "D")
    for run in ("T20260101-120000", "T20260102_G0a1b2c3d", "Tuesday"):
        (model / run).mkdir(parents=True)
        (model / run / "M_D.xlsx").write_bytes(b"x")
    assert prediction_file(str(tmp_path), "M", "D") == str(model / "T20260102_G0a1b2c3d" / "M_D.xlsx")
    (model / "M_D.xlsx").write_bytes(b"x")  # the model folder's own (ms-vlmeval, or upstream's link) comes first
    assert prediction_file(str(tmp_path), "M", "D") == str(model / "M_D.xlsx")
