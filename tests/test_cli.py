"""The ``vlmeval-prm`` command line as a newcomer meets it: --version, help that says where to start,
a filtered ``models`` table with a header, and a closed pipe that ends quietly (real subprocesses)."""

import os
import subprocess
import sys

import pytest

from vlmeval_prm import __version__
from vlmeval_prm.host.cli import DEMO_MEANING, main

CLI = [sys.executable, "-m", "vlmeval_prm.host.cli"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"vlmeval-prm {__version__}"


def test_help_lists_every_command_with_a_line_and_says_where_to_start(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("demo", "check-prm", "report", "serve", "models", "install-hook"):
        assert f"\n    {command}" in out
    assert "start here:" in out and "vlmeval-prm demo --tiny" in out


@pytest.mark.parametrize("command", ["demo", "report", "serve", "models", "check-prm", "install-hook"])
def test_each_command_describes_itself_and_shows_defaults(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert len(description.strip()) > 20  # a sentence, not just the usage line
    if command in ("demo", "report"):
        assert "(default: outputs)" in out
    if command == "serve":
        assert "(default: 8000)" in out and "(default: 127.0.0.1)" in out


def test_models_has_a_header_and_filters_by_name_and_route():
    out = subprocess.run([*CLI, "models", "internvl2_5-8b", "--route", "batched"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert lines[0].split()[:3] == ["name", "class", "route"]
    rows, summary = lines[1:-1], lines[-1]  # header, one line per name, the count
    names = [row.split()[0] for row in rows]
    assert "InternVL2_5-8B" in names and all("internvl2_5-8b" in n.lower() for n in names)
    assert all(row.split()[2] == "batched" for row in rows)
    assert summary.startswith(f"{len(rows)} of {len(rows)} names can sample")


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_a_closed_pipe_ends_quietly(extra):
    """``vlmeval-prm models | head -1``: the reader leaves after one line; no traceback, exit 0."""
    pipeline = f"{' '.join(CLI)} models {' '.join(extra)} | head -1; exit ${{PIPESTATUS[0]}}"
    out = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True)
    assert out.returncode == 0
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr
    assert len(out.stdout.splitlines()) == 1


@pytest.mark.e2e
def test_the_tiny_demo_prints_one_table_and_what_it_means(tmp_path):
    out = subprocess.run(
        [*CLI, "demo", "--tiny", "--work-dir", str(tmp_path / "outputs")],
        cwd=tmp_path,
        env={**os.environ, "LMUData": str(tmp_path / "LMUData")},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ours = out.stdout[out.stdout.index("candidate store:") :]  # after VLMEvalKit's own output
    assert ours.count("Best-of-N accuracy (%)") == 1 and ours.count("-----  ") == 1  # one table
    assert DEMO_MEANING["tiny"] in ours
    table = ours[ours.index("Best-of-N accuracy (%)") : ours.index(DEMO_MEANING["tiny"])].splitlines()
    assert table[1].split() == ["strategy", "1", "2", "4"]
    assert {"pass@1", "prm_mean", "orm", "self_consistency", "random", "oracle"} <= {r.split()[0] for r in table[3:]}
    assert max(len(line) for line in table) <= 100  # fits a terminal
    written = [line.split(": ", 1)[1] for line in ours.splitlines() if line.startswith("report: ")]
    assert written and all(os.path.isfile(tmp_path / p) or os.path.isfile(p) for p in written)


@pytest.mark.e2e
def test_the_search_demo_compares_three_methods_with_their_compute(tmp_path):
    """``demo --search --tiny`` on two rows (``--limit 2``, or all rows where the host has no ``--limit``): Best-of-N,
    beam search and DVTS at N = 4, one table whose compute columns are the means of what each search stored."""
    import pandas as pd
    from commands import HAS_LIMIT

    from vlmeval_prm.demo.search import COMPUTE, compute_per_question
    from vlmeval_prm.host.cli import DEMO_DATA

    work = str(tmp_path / "outputs")
    out = subprocess.run(
        [*CLI, "demo", "--search", "--tiny", "--work-dir", work, "--", *(["--limit", "2"] if HAS_LIMIT else [])],
        cwd=tmp_path,
        env={**os.environ, "LMUData": str(tmp_path / "LMUData")},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Search at N = 4" in out.stdout
    table = pd.read_csv(tmp_path / "outputs" / "search_demo.csv", index_col=0)
    assert [m.rsplit("-", 1)[1] for m in table.index] == ["StepBoN4", "Beam2x4", "DVTS2x4"]
    for model, row in table.iterrows():
        stored = compute_per_question(work, model, DEMO_DATA)
        assert row["questions"] == (2 if HAS_LIMIT else 36) and row["generated_tokens"] > 0
        assert all(row[k] == pytest.approx(stored[k]) for k in COMPUTE)
