"""Run every ``vlmeval.plugins`` entry point right after ``vlmeval.config`` is imported.

Installed by ``vlmeval_prm_hook.pth``. Costs one tiny import at interpreter start and touches
nothing of vlmeval until vlmeval itself imports its config. Any failure, a plugin's ``sys.exit``
included, is one warning line.
``VLMEVAL_PLUGINS_DISABLE=1`` switches it off: the ``.pth`` then imports nothing (like
pytest-cov's env-gated ``.pth``), and setting it in-process before vlmeval's config is imported
works too. Dependency-free on purpose: it runs in every interpreter.
An entry point names a zero-argument callable; an optional ``vlmeval_plugin_order`` attribute
(default 0) orders them, so a plugin that derives names from all others can run last.
"""

import os
import sys

TARGET = "vlmeval.config"
GROUP = "vlmeval.plugins"
#: Any value but empty or ``0`` switches the hook off (the ``.pth`` checks the same).
DISABLE_ENV = "VLMEVAL_PLUGINS_DISABLE"


def disabled():
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


#: What a plugin may raise without stopping vlmeval: any error, and ``sys.exit`` (SystemExit).
#: KeyboardInterrupt still stops the user's run.
CAUGHT = (Exception, SystemExit)


def _warn(what, exc):
    sys.stderr.write(f"[vlmeval plugins] {what}: {type(exc).__name__}: {exc}\n")


def run_plugins():
    """Load and call every registered plugin; one failing plugin never stops the others."""
    from importlib.metadata import entry_points

    plugins, seen = [], set()
    for ep in entry_points(group=GROUP):
        if ep.value in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(ep.value)
        try:
            fn = ep.load()
        except CAUGHT as exc:
            _warn(f"cannot load plugin {ep.name!r} ({ep.value})", exc)
            continue
        plugins.append((getattr(fn, "vlmeval_plugin_order", 0), ep.name, fn))
    for _, name, fn in sorted(plugins, key=lambda p: (p[0], p[1])):
        try:
            fn()
        except CAUGHT as exc:
            _warn(f"plugin {name!r} failed", exc)


class PluginFinder:
    """A meta-path finder that only ever answers for ``vlmeval.config``."""

    vlmeval_plugins_hook = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET or disabled():
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_plugins(module):
            exec_module(module)
            try:
                run_plugins()
            except CAUGHT as exc:
                _warn("plugin loading failed", exc)

        loader.exec_module = exec_then_plugins
        return spec


def install():
    """Idempotent: several packages may ship this hook; only the first finder is kept."""
    if any(getattr(f, "vlmeval_plugins_hook", False) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, PluginFinder())
