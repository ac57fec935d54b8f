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
import os
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


#: Names of settings that hold credentials (config keys, environment variables).
SECRET_NAMES = ("key", "token", "secret", "password")


def is_secret(name: str) -> bool:
    return any(part in name.lower() for part in SECRET_NAMES)


class RedactSecrets(logging.Filter):
    """Replaces every registered secret in a log line by ``***`` (VLMEvalKit's GPT4V logs its API key when
    it is built). Installed on the handlers, so lines from any logger are covered."""

    def __init__(self):
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = text
        for secret in self.secrets:
            masked = masked.replace(secret, "***")
        if masked != text:
            record.msg, record.args = masked, ()
        return True


_REDACT = RedactSecrets()


def redact_secrets(config: dict | None = None) -> None:
    """Keep the secrets of ``config`` (values of credential-named keys) and of the environment (e.g.
    ``OPENAI_API_KEY``) out of every log line that the handlers of VLMEvalKit's and the root logger write."""
    values = {str(v) for k, v in (config or {}).items() if is_secret(k) and v}
    values |= {v for k, v in os.environ.items() if is_secret(k) and len(v) >= 8}
    _REDACT.secrets |= {v for v in values if len(v) >= 4}
    for logger in (logging.getLogger(VLMEVAL_ROOT), logging.getLogger()):
        for handler in logger.handlers:
            if _REDACT not in handler.filters:
                handler.addFilter(_REDACT)
