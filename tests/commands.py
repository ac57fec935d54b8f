"""The documented VLMEvalKit command the end-to-end tests run, built in one place for the installed host:
``python -m vlmeval.run`` (PyPI ms-vlmeval, CI) or a checkout's ``python run.py`` (upstream VLMEvalKit,
tools/test_upstream.sh)."""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files

from vlmeval_prm.datasets.mini_mcq import MINI_MCQ
from vlmeval_prm.host.runner import find_host

HOST = find_host()
#: ms-vlmeval's run has ``--limit``; upstream's run.py has not.
HAS_LIMIT = HOST.accepts("--limit")


def vlmeval_run_command(
    selection: Sequence[str], work_dir, *extra: str, judge: str | None = "exact_matching"
) -> list[str]:
    """``<host run> <selection> [--judge J] --work-dir W [extra ...]``; ``selection`` is
    ``--model M --data D`` or ``--config C``; ``judge=None`` for datasets that need none."""
    return [*HOST.command(), *selection, *(["--judge", judge] if judge else []), "--work-dir", str(work_dir), *extra]


@dataclass(frozen=True)
class MiniRows:
    """The first ``rows`` rows of the shipped mini MCQ set: ``--data VLMEvalPRM_MiniMCQ --limit rows`` where
    the host has ``--limit``; elsewhere a dataset of those rows, written into ``$LMUData`` as a TSV of the
    same format and read by VLMEvalKit's own custom-MCQ route (``CustomMCQDataset``)."""

    rows: int

    @property
    def data(self) -> str:
        return MINI_MCQ if HAS_LIMIT else f"{MINI_MCQ}{self.rows}"

    def args(self, lmudata) -> list[str]:
        """What to add to the command; writes the TSV into ``lmudata`` where it is needed."""
        if HAS_LIMIT:
            return ["--limit", str(self.rows)]
        lmudata.mkdir(parents=True, exist_ok=True)
        lines = (files("vlmeval_prm") / "data" / f"{MINI_MCQ}.tsv").read_text(encoding="utf-8").splitlines(True)
        (lmudata / f"{self.data}.tsv").write_text("".join(lines[: self.rows + 1]), encoding="utf-8")
        return []

    def config(self) -> dict:
        """The ``--config`` ``data`` entry."""
        cls = "VLMEvalPRMMiniMCQ" if HAS_LIMIT else "CustomMCQDataset"
        return {self.data: {"class": cls, "dataset": self.data}}


def checkout_of_installed(folder):
    """A VLMEvalKit checkout layout made of the installed host: ``folder/run.py`` (the host's entry point
    as a script) beside ``folder/vlmeval`` (a link to the installed package), as a git clone has them."""
    import vlmeval

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.py").write_text(open(HOST.path, encoding="utf-8").read(), encoding="utf-8")
    (folder / "vlmeval").symlink_to(os.path.dirname(os.path.realpath(vlmeval.__file__)), target_is_directory=True)
    return folder


def run_tiny_bon(work, name: str, prm: str, prm_options: dict, rows: MiniRows, n: int = 2) -> dict:
    """``<host run> --config`` for Best-of-``n`` of the tiny demo policy scored by ``prm`` on ``rows``, in
    ``work``; VLMEvalKit's prediction files of an earlier call go first (every row is asked for again, the
    store stays). Returns the store, indexed (``SampleRecords`` by key); fails the test if the run fails."""
    import json
    import subprocess

    from vlmeval_prm.constants import DEMO_ENV
    from vlmeval_prm.store.jsonl import index_records, read_records
    from vlmeval_prm.store.paths import store_file

    entry = {"class": "BestOfN", "model": "VLMEvalPRM-TinyPolicy", "n": n, "prm": prm, "prm_options": prm_options}
    (work / "config.json").write_text(json.dumps({"model": {name: entry}, "data": rows.config()}))
    folder = work / "outputs" / name
    for path in folder.glob(f"{name}_{rows.data}*"):
        if not path.name.endswith("_bon_candidates.jsonl"):
            path.unlink()
    env = {**os.environ, "LMUData": str(work / "LMUData"), DEMO_ENV: "1"}
    args = ["--config", str(work / "config.json"), *rows.args(work / "LMUData")]
    proc = subprocess.run(
        vlmeval_run_command(args, work / "outputs"), cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return index_records(read_records(store_file(str(folder), name, rows.data)))


#: The host's run (vlmeval.run, or a checkout's run.py) after accepting stand-in TSVs in $LMUData under the real
#: dataset names (no download, no checksum): ``standins.offline_benchmarks.pin_offline_checksums``.
PINNED_RUNNER = (
    "import runpy, sys; sys.path.insert(0, {tests!r}); "
    "from standins.offline_benchmarks import pin_offline_checksums; pin_offline_checksums({names!r}); "
    + (
        "sys.argv = ['vlmeval.run', *sys.argv[1:]]; runpy.run_module('vlmeval.run', run_name='__main__')"
        if HOST.kind == "module"
        else f"sys.argv = [{HOST.path!r}, *sys.argv[1:]]; runpy.run_path({HOST.path!r}, run_name='__main__')"
    )
)


def pinned_run_command(names: Sequence[str], *args: str) -> list[str]:
    """``<python> -c PINNED_RUNNER <args>``: the host's run on the stand-in TSVs of ``names``."""
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    return [sys.executable, "-c", PINNED_RUNNER.format(tests=tests, names=list(names)), *args]


def one_output(folder, pattern: str):
    """The one file ``pattern`` names under a model's output folder: ms-vlmeval writes it there, upstream run.py
    writes it into the run folder ``<eval_id>/`` and links it there (the same file twice: one is returned)."""
    import pathlib

    found = {pathlib.Path(p).resolve(): p for p in pathlib.Path(folder).rglob(pattern)}
    assert len(found) == 1, f"{pattern} under {folder}: {sorted(map(str, found))}"
    return next(iter(found.values()))
