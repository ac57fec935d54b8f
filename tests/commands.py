"""The documented VLMEvalKit command the end-to-end tests run, built in one place."""

import sys
from collections.abc import Sequence


def vlmeval_run_command(
    selection: Sequence[str], work_dir, *extra: str, judge: str | None = "exact_matching"
) -> list[str]:
    """``python -m vlmeval.run <selection> [--judge J] --work-dir W [extra ...]``; ``selection`` is
    ``--model M --data D`` or ``--config C``; ``judge=None`` for datasets that need none."""
    return [
        sys.executable,
        "-m",
        "vlmeval.run",
        *selection,
        *(["--judge", judge] if judge else []),
        "--work-dir",
        str(work_dir),
        *extra,
    ]
