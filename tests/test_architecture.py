"""The layout keeps its shape: one subpackage per stage, few top-level modules, no import cycle.

The import graph is read from the source (every ``import`` statement, at module level or inside a
function), so a cycle hidden behind a lazy import counts too. Names resolved at run time
(``importlib.import_module`` of a registry string) are not imports and are left out.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = "vlmeval_prm"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported(node: ast.AST, importer: str) -> list[str]:
    """Our modules an import statement runs, as full names (a package stands for its ``__init__``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        assert not node.level, f"{importer}: relative import (this package imports absolutely)"
        stem = node.module
        # ``from a.b import c`` imports a.b.c when c is a submodule, else an attribute of a.b
        names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in MODULES else stem for a in node.names]
    else:
        return []
    found = set()
    for name in names:
        if not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        # importing a.b.c first runs a and a.b, except the packages the importer already lives in
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            if target in MODULES and not (importer == target or importer.startswith(target + ".")):
                found.add(target)
    return sorted(found)


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = {t for node in ast.walk(tree) for t in imported(node, name)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None (iterative three-colour DFS)."""
    state = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    for start in graph:
        if state[start]:
            continue
        stack, path = [(start, iter(sorted(graph[start])))], [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif state.get(child) == 0:
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def stage(module: str) -> str:
    """The top-level part of ``vlmeval_prm`` a module belongs to: ``prm``, ``steps``, ..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def test_the_graph_reader_sees_cycles_and_lazy_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()
    # plugin.py imports the datasets package only inside a function: still an edge
    assert "vlmeval_prm.datasets" in graph["vlmeval_prm.host.plugin"]
    # ``from vlmeval_prm.store.jsonl import ...`` runs the store package's __init__ first
    assert {"vlmeval_prm.store", "vlmeval_prm.store.jsonl"} <= graph["vlmeval_prm.host.bon"]


def test_no_import_cycle_between_modules():
    assert find_cycle(import_graph()) is None


def test_no_import_cycle_between_stages():
    """Data flows one way: the graph collapsed to top-level packages and modules is acyclic too."""
    stages: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        if module == PACKAGE:
            continue
        stages.setdefault(stage(module), set()).update(stage(t) for t in targets if stage(t) != stage(module))
    for targets in stages.values():
        targets.discard(PACKAGE)  # the package's own __init__
    assert find_cycle(stages) is None


@pytest.mark.parametrize("kind", ["subpackages", "modules"])
def test_layout_size(kind):
    """At least 5 stage subpackages; at most 8 top-level modules (new code goes into a stage)."""
    subpackages = [p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()]
    modules = [p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"]
    if kind == "subpackages":
        assert len(subpackages) >= 5, subpackages
    else:
        assert len(modules) <= 8, modules
