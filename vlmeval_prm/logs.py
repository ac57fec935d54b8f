"""Loggers inside VLMEvalKit's logger tree, so our lines show where the run's own lines show.

``python -m vlmeval.run`` (every torchrun rank included) calls VLMEvalKit's ``setup_logger``, which
gives the ``vlmeval`` logger a console and a log-file handler and stops it propagating
(vlmeval/smp/log.py). Our loggers are named ``vlmeval.vlmeval_prm.<module>``, children of that
logger, so every wait, mode choice and failure reaches both. (VLMEvalKit's own ``get_logger`` cannot
name them: it prefixes only names that do not start with ``vlmeval``, and ``vlmeval_prm`` does.)

Until something sets up a handler on the way (a benchmark, the CLI, a notebook, or import time
before ``setup_logger``), one fallback handler prints INFO and above to stderr, in VLMEvalKit's
format; like ``logging.lastResort`` it stays silent as soon as any real handler would get the line,
so no line shows twice. vlmeval is never imported just to log.
"""

from __future__ import annotations

import logging
import sys

#: VLMEvalKit's root logger (``ROOT_LOGGER_NAME`` in vlmeval/smp/log.py).
VLMEVAL_ROOT = "vlmeval"
PACKAGE = "vlmeval_prm"
#: The parent of every logger of this package.
ROOT = f"{VLMEVAL_ROOT}.{PACKAGE}"
#: VLMEvalKit's ``setup_logger`` format.
FORMAT = "[%(asctime)s] %(levelname)s - %(name)s: %(message)s"


def _handled_elsewhere() -> bool:
    """Whether a real handler above our root (``vlmeval``, then the root logger) gets our records."""
    logger: logging.Logger | None = logging.getLogger(VLMEVAL_ROOT)
    while logger is not None:
        if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


class FallbackHandler(logging.StreamHandler):
    """stderr at INFO while nobody else prints our records; silent once anyone does."""

    def __init__(self):
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        if not _handled_elsewhere():
            self.stream = sys.stderr  # the current one (pytest and notebooks swap it)
            super().emit(record)


def _setup() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, FallbackHandler) for h in root.handlers):
        root.addHandler(FallbackHandler())
        if root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    return root


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name`` (``__name__`` of a ``vlmeval_prm`` module)."""
    root = _setup()
    suffix = name.removeprefix(PACKAGE).lstrip(".")
    return root.getChild(suffix) if suffix else root
