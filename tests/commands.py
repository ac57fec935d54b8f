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
