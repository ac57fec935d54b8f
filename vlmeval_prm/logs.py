"""Loggers that show where the user looks: through VLMEvalKit's ``get_logger`` set-up.

Under ``python -m vlmeval.run`` and torchrun, VLMEvalKit's handlers and levels apply to the
``vlmeval_prm`` logger tree, so every wait, mode choice and failure is printed with the run's own
lines. Outside VLMEvalKit (a benchmark, a notebook) the tree gets one INFO stream handler instead;
vlmeval is never imported just to log.
"""

from __future__ import annotations

import logging
import sys

ROOT = "vlmeval_prm"
_state = {"via": None}  # None, "vlmeval" or "fallback": how the root logger was set up


def _setup() -> None:
    root = logging.getLogger(ROOT)
    if _state["via"] == "vlmeval":
        return
    if "vlmeval.smp" in sys.modules:
        from vlmeval.smp import get_logger as vlmeval_logger

        for handler in list(root.handlers):  # a fallback handler from before vlmeval was imported
            root.removeHandler(handler)
        vlmeval_logger(ROOT)
        _state["via"] = "vlmeval"
    elif _state["via"] is None:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s - %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        _state["via"] = "fallback"


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name`` (a child of ``vlmeval_prm``)."""
    _setup()
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")
