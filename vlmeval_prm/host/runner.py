"""The installed VLMEvalKit's run entry point, on either host.

PyPI's ``ms-vlmeval`` ships it as the module ``vlmeval.run`` (``python -m vlmeval.run``); a git checkout
of upstream VLMEvalKit (installed editable) has a top-level ``run.py`` next to its ``vlmeval`` package
(``python run.py``), which the ``vlmeval`` package does not contain. Everything in this plugin that
launches a run or builds a model the way a run does (``demo``, ``serve --config``) asks this module.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

#: A VLMEvalKit checkout whose ``run.py`` to use, when the installed ``vlmeval`` is not one.
ROOT_ENV = "VLMEVALKIT_ROOT"
MODULE = "vlmeval.run"
SCRIPT = "run.py"


class HostNotFound(RuntimeError):
    """Neither ``vlmeval.run`` nor a checkout's ``run.py`` was found; the message says where it looked."""


@dataclass(frozen=True)
class Host:
    """One VLMEvalKit entry point: the ``vlmeval.run`` module or a checkout's ``run.py`` (``path``)."""

    kind: str  # "module" or "script"
    path: str

    def command(self) -> list[str]:
        """The argv prefix that runs it with this interpreter."""
        if self.kind == "module":
            return [sys.executable, "-m", MODULE]
        return [sys.executable, self.path]

    def describe(self) -> str:
        return f"python -m {MODULE}" if self.kind == "module" else f"python {self.path}"

    def accepts(self, flag: str) -> bool:
        """Whether its argument parser defines ``flag`` (``--limit`` exists in ms-vlmeval only)."""
        source = Path(self.path).read_text(encoding="utf-8")
        return re.search(rf"add_argument\(\s*['\"]{re.escape(flag)}['\"]", source) is not None

    def load(self) -> ModuleType:
        """The entry point as a module (its ``main`` guarded by ``__name__``, so nothing runs)."""
        return _load(self.kind, self.path)


@functools.cache
def _load(kind: str, path: str) -> ModuleType:
    if kind == "module":
        return importlib.import_module(MODULE)
    spec = importlib.util.spec_from_file_location("vlmevalkit_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_host(root: str | os.PathLike | None = None) -> Host:
    """The entry point to use: ``root``'s (or ``$VLMEVALKIT_ROOT``'s) ``run.py`` when given, else the
    installed ``vlmeval.run`` module, else the ``run.py`` of the checkout the installed ``vlmeval``
    package lives in."""
    named = "--vlmevalkit-root" if root else f"${ROOT_ENV}"
    root = root or os.environ.get(ROOT_ENV) or None
    looked: list[str] = []
    if root is not None:
        script = Path(root).expanduser().resolve() / SCRIPT
        if script.is_file() and (script.parent / "vlmeval").is_dir():
            return Host("script", str(script))
        raise HostNotFound(
            f"{script.parent} (from {named}) is not a VLMEvalKit checkout: no {SCRIPT} next to a vlmeval/ folder"
        )
    spec = importlib.util.find_spec("vlmeval")
    if spec is None or not spec.submodule_search_locations:
        raise HostNotFound(
            "VLMEvalKit is not installed: `pip install ms-vlmeval` (PyPI) or `pip install -e <checkout>` "
            f"(git clone of open-compass/VLMEvalKit), or name a checkout with ${ROOT_ENV}"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    module = package / "run.py"
    if module.is_file():
        return Host("module", str(module))
    looked.append(f"the module {MODULE} ({module})")
    script = package.parent / SCRIPT
    if script.is_file():
        return Host("script", str(script))
    looked.append(f"a checkout's {SCRIPT} next to the package ({script})")
    raise HostNotFound(
        f"the installed vlmeval ({package}) has no run entry point; looked for {' and '.join(looked)}. "
        f"Install ms-vlmeval, install a VLMEvalKit checkout editable, or name one with ${ROOT_ENV} or --vlmevalkit-root"
    )


def build_model_from_config(cfg: dict, name: str, host: Host | None = None) -> Any:
    """VLMEvalKit's own ``build_model_from_config`` (both hosts define it in their entry point)."""
    return (host or find_host()).load().build_model_from_config(cfg, name)
