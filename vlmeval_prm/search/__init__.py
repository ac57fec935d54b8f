"""PRM-guided search beyond Best-of-N: one module per method, each a short function over a step policy and
a scorer (``search.base``), registered by name (lazy ``"module:function"`` entries, as ``prm.formats``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from vlmeval_prm.search.base import SearchConfig, SearchResult

__all__ = ["METHODS", "SearchConfig", "SearchResult", "search_method"]

#: name -> "module:function", imported when used.
METHODS: dict[str, str] = {
    "best_of_n": "vlmeval_prm.search.best_of_n:best_of_n",
    "beam": "vlmeval_prm.search.beam:beam",
    "dvts": "vlmeval_prm.search.dvts:dvts",
}


def search_method(name: str) -> Callable[..., SearchResult]:
    """The search function registered as ``name``; ValueError listing the methods otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown search method {name!r}; registered: {', '.join(sorted(METHODS))}")
    module, _, function = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), function)
