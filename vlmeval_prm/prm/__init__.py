"""PRM backends behind one interface, chosen by a spec string ``<backend>:<target>``.

``transformers:/path/or/hub-id`` loads the PRM in-process; ``lmdeploy:http://host:23333`` (several
URLs separated by commas, or the URL of ``lmdeploy serve proxy``) talks to served PRMs.
A spec without a backend prefix is taken as ``transformers:<spec>``.
"""

from __future__ import annotations

import importlib

from vlmeval_prm.prm.base import PRMScorer, StepScores, failed  # noqa: F401  (the public interface)

#: backend name -> "module:Class"; imported only when used so no backend's dependencies load early.
BACKENDS: dict[str, str] = {
    "transformers": "vlmeval_prm.prm.hf_backend:TransformersPRM",
    "lmdeploy": "vlmeval_prm.prm.lmdeploy_backend:LMDeployPRM",
}


def parse_spec(spec: str) -> tuple[str, str]:
    if spec.startswith(("http://", "https://")):
        return "lmdeploy", spec
    backend, sep, target = spec.partition(":")
    if not sep or "/" in backend:
        return "transformers", spec
    if backend not in BACKENDS:
        raise ValueError(f"unknown PRM backend {backend!r} in spec {spec!r}; choose from {sorted(BACKENDS)}")
    return backend, target


def build_scorer(spec: str, **options) -> PRMScorer:
    """Build the PRM named by ``spec``; ``options`` go to the backend (e.g. system_prompt, batch_size)."""
    backend, target = parse_spec(spec)
    module, _, cls = BACKENDS[backend].partition(":")
    return getattr(importlib.import_module(module), cls)(target, **options)
