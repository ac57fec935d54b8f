"""PRM formats: everything model-specific about what a PRM is shown and where its scores are read.

A format is one class (``base.PRMFormat``) in one module here, registered below by name as a lazy
``"module:Class"`` entry (lm-evaluation-harness's registry style: nothing is imported until a format is
used). Backends and host code ask the format (``build_format``); none names a format's wording or tokens.
Adding a format: one new module and one line in ``FORMATS``.
"""

from __future__ import annotations

import importlib

from vlmeval_prm.prm.formats.base import FORMAT_DEFAULT, PRMFormat

__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "FORMAT_DEFAULT",
    "PRMFormat",
    "build_format",
    "check_backend",
    "detect_format",
    "format_class",
]

#: name -> "module:Class", imported when used.
FORMATS: dict[str, str] = {
    "visualprm": "vlmeval_prm.prm.formats.visualprm:VisualPRMFormat",
    "vl-prm": "vlmeval_prm.prm.formats.vl_prm:VLPRMFormat",
    "mm-prm": "vlmeval_prm.prm.formats.mm_prm:MMPRMFormat",
    "qwen-math-prm": "vlmeval_prm.prm.formats.qwen_math_prm:QwenMathPRMFormat",
    "ursa-rm": "vlmeval_prm.prm.formats.ursa_rm:URSARMFormat",
}
#: The format of a PRM spec whose options name none (VisualPRM-8B's, the plugin's default PRM).
DEFAULT_FORMAT = "visualprm"


def format_class(name: str) -> type[PRMFormat]:
    """The format registered as ``name``; ValueError listing the registered ones otherwise."""
    if name not in FORMATS:
        raise ValueError(f"unknown PRM format {name!r}; registered formats: {', '.join(sorted(FORMATS))}")
    module, _, cls = FORMATS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def detect_format(config: dict) -> str | None:
    """The format a checkpoint's ``config.json`` names unambiguously (its ``model_type`` or an
    architecture that one format alone reads, e.g. URSA's ``ursa``), else None."""
    names = {config.get("model_type"), *(config.get("architectures") or ())}
    found = [name for name in FORMATS if names & set(format_class(name).detects)]
    return found[0] if len(found) == 1 else None


def check_backend(name: str, backend: str) -> None:
    """ValueError unless format ``name`` can be scored on ``backend``."""
    fmt = format_class(name)
    if backend not in fmt.backends:
        raise ValueError(f"the {name} format has no {backend} backend (it has {', '.join(fmt.backends)})")


def build_format(name: str = DEFAULT_FORMAT, **fields) -> PRMFormat:
    """Format ``name`` with ``fields`` (e.g. ``system_prompt``; ``FORMAT_DEFAULT`` keeps the format's own)."""
    cls = format_class(name)
    return cls(**{k: v for k, v in fields.items() if v is not FORMAT_DEFAULT and v != FORMAT_DEFAULT})
