"""What a VLMEvalKit class's ``generate_inner`` calls, read from its source.

Routes follow the code, not the class name: a family adapter was checked against the ``generate_inner``
of the classes it is registered for, and a subclass that overrides it (upstream's ``MiniCPM_V_4_6``
under ``MiniCPM_V_4``) keeps that adapter only if its own code still does what the adapter relies on.
This module finds the engine calls (``.generate(``, ``.chat(``, ``.generate_from_batch(``) that
``generate_inner`` makes, directly, through the methods of ``self`` it calls, or through plain functions
of its module, with the keywords each call passes and whether the wrapper's settings dict
(``self.kwargs``) reaches it (spread with ``**``, directly or through a local dict built or updated from it).
"""

from __future__ import annotations

import ast
import functools
import inspect
import sys
import textwrap
from dataclasses import dataclass

#: Methods through which a wrapper reaches a transformers ``generate`` (a remote-code ``chat`` and
#: Molmo's ``generate_from_batch`` call it inside).
ENGINE_METHODS = frozenset({"generate", "generate_from_batch", "chat"})

#: Keywords that switch decoding in a model's *own* ``generate`` and that transformers' ``generate``
#: spells otherwise: a ``.generate(`` call passing one is not transformers' (nanoVLM's ``greedy=True``),
#: and would be rejected by it (``model_kwargs are not used``).
FOREIGN_DECODING = {"greedy": "do_sample", "sampling": "do_sample"}


@dataclass(frozen=True)
class EngineCall:
    """One engine call in a class's generation code."""

    where: str  # "Class.method" (or the module function) that makes it
    call: str  # the callee as written, e.g. "self.model.chat"
    method: str  # generate, chat or generate_from_batch
    keywords: tuple[str, ...]  # keyword arguments passed by name
    settings: bool  # whether the settings dict (self.<settings_attr>) reaches it, spread or as an argument

    @property
    def foreign(self) -> str | None:
        """The decoding keyword that shows a ``.generate(`` is not transformers', else None."""
        if self.method != "generate":
            return None
        return next((k for k in self.keywords if k in FOREIGN_DECODING), None)

    def describe(self) -> str:
        kw = "".join(f", {k}=" for k in self.keywords)
        return f"{self.call}(...{kw}) in {self.where}"


def owner(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO that defines attribute ``name``."""
    return next((k for k in cls.__mro__ if name in vars(k)), None)


def entry(cls: type) -> str:
    """The method a VLMEvalKit class answers through: ``generate_inner`` (what ``BaseModel.generate``
    calls), or ``generate`` itself where the class overrides that (QH_360VL, XComposer2_4KHD)."""
    klass = owner(cls, "generate")
    return "generate" if klass is not None and klass.__name__ != "BaseModel" else "generate_inner"


def _source_tree(func) -> ast.AST | None:
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return None


def _mentions(node: ast.AST, names: set[str], attr: str) -> bool:
    """Whether ``node`` reads ``self.<attr>`` or one of the local ``names``."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in names:
            return True
        if (
            isinstance(sub, ast.Attribute)
            and sub.attr == attr
            and isinstance(sub.value, ast.Name)
            and sub.value.id == "self"
        ):
            return True
    return False


def _carriers(tree: ast.AST, attr: str) -> set[str]:
    """Local names that hold the settings: assigned from an expression reading them, or ``.update``d with it."""
    names: set[str] = set()
    while True:
        before = len(names)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _mentions(node.value, names, attr):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "update"
                and isinstance(node.func.value, ast.Name)
                and any(_mentions(a, names, attr) for a in [*node.args, *(k.value for k in node.keywords)])
            ):
                names.add(node.func.value.id)
        if len(names) == before:
            return names


@functools.cache
def engine_calls(cls: type, settings_attr: str = "kwargs") -> tuple[EngineCall, ...]:
    """The engine calls ``cls``'s ``entry`` method makes (see the module docstring); empty when there
    is no source to read."""
    module = sys.modules.get(cls.__module__)
    out: list[EngineCall] = []
    seen: set[str] = set()

    def visit(func, where: str) -> None:
        if where in seen:
            return
        seen.add(where)
        tree = _source_tree(func)
        if tree is None:
            return
        carriers = _carriers(tree, settings_attr)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in ENGINE_METHODS and ast.unparse(f.value) != "self":
                out.append(
                    EngineCall(
                        where=where,
                        call=ast.unparse(f),
                        method=f.attr,
                        keywords=tuple(k.arg for k in node.keywords if k.arg is not None),
                        settings=any(_mentions(k.value, carriers, settings_attr) for k in node.keywords),
                    )
                )
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
                klass = owner(cls, f.attr)
                if klass is not None and klass.__name__ not in ("BaseModel", "object"):
                    target = vars(klass)[f.attr]
                    if inspect.isfunction(target):
                        visit(target, f"{klass.__name__}.{f.attr}")
            elif isinstance(f, ast.Name) and module is not None:
                target = vars(module).get(f.id)
                if inspect.isfunction(target) and target.__module__ == cls.__module__:
                    visit(target, f.id)

    method = entry(cls)
    klass = owner(cls, method)
    if klass is not None and klass.__name__ != "BaseModel":
        visit(vars(klass)[method], f"{klass.__name__}.{method}")
    return tuple(out)
