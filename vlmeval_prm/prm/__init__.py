"""PRM backends behind one interface, chosen by a spec string ``<backend>:<target>``.

``transformers:/path/or/hub-id`` loads the PRM in-process (HF-native or remote-code InternVL
checkpoints); ``lmdeploy:http://host:23333`` (several URLs separated by commas) talks to served PRMs,
``vllm:http://host:8000`` to vLLM servers; ``critic:<model>`` asks any VLMEvalKit model for step verdicts.
A spec without a backend prefix is taken as ``transformers:<spec>``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re

from vlmeval_prm.logs import get_logger
from vlmeval_prm.prm.base import PRMScorer, StepScores, failed  # noqa: F401  (the public interface)

log = get_logger(__name__)

#: backend name -> "module:Class"; imported only when used so no backend's dependencies load early.
BACKENDS: dict[str, str] = {
    "transformers": "vlmeval_prm.prm.hf_backend:TransformersPRM",
    "lmdeploy": "vlmeval_prm.prm.lmdeploy_backend:LMDeployPRM",
    "vllm": "vlmeval_prm.prm.vllm_backend:VLLMPRM",
    "critic": "vlmeval_prm.prm.critic_backend:CriticPRM",
}

#: A hub model id: "name" or "owner/name" (what is not a local directory must look like this).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
#: Seconds the spec check waits for a PRM server's /health before logging that scoring will wait.
REACHABLE_TIMEOUT = 2.0


def parse_spec(spec: str) -> tuple[str, str]:
    """(backend, target) from the spec's scheme alone; a bare URL is refused (a server could be either)."""
    if spec.startswith(("http://", "https://")):
        raise ValueError(f"PRM spec {spec!r} names no backend: use lmdeploy:{spec} or vllm:{spec}")
    backend, sep, target = spec.partition(":")
    if not sep or "/" in backend:
        return "transformers", spec
    if backend not in BACKENDS:
        raise ValueError(f"unknown PRM backend {backend!r} in spec {spec!r}; choose from {sorted(BACKENDS)}")
    return backend, target


def _backend_class(backend: str) -> type:
    module, _, cls = BACKENDS[backend].partition(":")
    return getattr(importlib.import_module(module), cls)


def _options(cls: type) -> list[inspect.Parameter]:
    """The options a backend takes: its constructor's parameters after ``self`` and the target."""
    return list(inspect.signature(cls.__init__).parameters.values())[2:]


def build_scorer(spec: str, **options) -> PRMScorer:
    """Build the PRM named by ``spec``; ``options`` go to the backend (e.g. system_prompt, batch_size)."""
    backend, target = parse_spec(spec)
    return _backend_class(backend)(target, **options)


def backend_class(spec: str) -> type[PRMScorer]:
    """The backend class of ``spec`` (its class attributes say what host code needs, e.g. ``concurrent``)."""
    return _backend_class(parse_spec(spec)[0])


def identity_from_server(spec: str) -> bool:
    """Whether ``scorer_identity`` of ``spec`` needs the scorer built (a served PRM names its model)."""
    return _backend_class(parse_spec(spec)[0]).identity_from_server


def scorer_identity(spec: str, options: dict | None = None, scorer: PRMScorer | None = None) -> dict:
    """What the PRM ``spec`` with ``options`` scores by: its backend's ``identity_of`` on every option's
    effective value (defaults filled in), so an option left out and one given its default agree.
    Loads no model (a fully scored rerun never does). A served PRM's model is what its servers name:
    read from ``scorer`` when given (built, it has waited for them with the usual messages), else
    asked with one ``GET /v1/models``."""
    backend, target = parse_spec(spec)
    cls = _backend_class(backend)
    effective = {**{p.name: p.default for p in _options(cls)}, **(options or {})}
    if scorer is not None and cls.identity_from_server:
        return cls.identity_of(target, effective, served=scorer.served_model)
    return cls.identity_of(target, effective)


def spec_format(spec: str, options: dict | None = None) -> str:
    """The PRM format ``spec`` scores in: its options' ``format``, else the one an in-process checkpoint's
    ``config.json`` names (``formats.detect_format``), else the default."""
    from vlmeval_prm.prm.formats import DEFAULT_FORMAT

    given = (options or {}).get("format")
    if given:
        return given
    backend, target = parse_spec(spec)
    if backend != "transformers":
        return DEFAULT_FORMAT
    from vlmeval_prm.prm.hf_backend import checkpoint_format

    return checkpoint_format(target, None)


def validate_spec(spec: str, options: dict | None = None) -> None:
    """Check a PRM spec and its options before any expensive work (sampling, loading a model).

    An unknown backend, an option the backend does not take, a malformed server URL, or a local
    checkpoint path that does not exist raises ``ValueError`` naming the spec. A server that does
    not answer yet is not an error: it is logged, and scoring waits for it (``startup_timeout``).
    """
    try:
        backend, target = parse_spec(spec)
        params = [p.name for p in _options(_backend_class(backend))]
        unknown = sorted(set(options or {}) - set(params))
        if unknown:
            raise ValueError(
                f"the {backend} backend takes no option {', '.join(map(repr, unknown))} (it takes {', '.join(params)})"
            )
        options = dict(options or {})
        if options.get("template") is not None:
            from vlmeval_prm.prm.conversation import chat_template

            chat_template(options["template"])
        if _backend_class(backend).uses_format:  # read once (a checkpoint's config.json), checked after the target
            options["format"] = spec_format(spec, options)
        _CHECKS[backend](target, options)
        if _backend_class(backend).uses_format:
            from vlmeval_prm.prm.formats import check_backend

            check_backend(options["format"], backend)
    except ValueError as exc:
        raise ValueError(f"PRM spec {spec!r}: {exc}") from None


def _check_checkpoint(target: str, options: dict) -> None:
    if target.startswith("tiny:"):
        from vlmeval_prm.tiny import TINY_ROLES

        if target[5:] not in TINY_ROLES:
            raise ValueError(f"no tiny model {target[5:]!r}; there are {list(TINY_ROLES)}")
        return
    path = os.path.expanduser(target)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{path} has no config.json: not a model checkpoint")
    elif not _HUB_ID.match(target) or target.startswith("."):
        raise ValueError(f"no such checkpoint directory: {path}")
    elif os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(target, "config.json"), str):
            raise ValueError(f"{target} is neither a local directory nor in the hub cache (HF_HUB_OFFLINE is set)")
    # a format whose model code is a package of its own: that package imports (before any work)
    from vlmeval_prm.loading import package_classes
    from vlmeval_prm.prm.formats import format_class
    from vlmeval_prm.prm.hf_backend import checkpoint_format

    fmt = checkpoint_format(target, options.get("format"))
    package_classes(target, fmt, format_class(fmt).model_code, options.get("code"))


def _check_servers(target: str, options: dict) -> None:
    import httpx

    from vlmeval_prm.prm.lmdeploy_backend import MODES, server_urls

    if options.get("mode", "auto") not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {options['mode']!r}")
    for url in server_urls(target):
        try:
            httpx.get(f"{url}/health", timeout=REACHABLE_TIMEOUT)
        except httpx.TransportError as exc:
            log.warning(
                "PRM server %s does not answer yet (%s); scoring will wait up to %.0fs for it",
                url,
                type(exc).__name__,
                options.get("startup_timeout", 600.0),
            )


def _check_vllm_servers(target: str, options: dict) -> None:
    from vlmeval_prm.prm.lmdeploy_backend import server_urls

    server_urls(target)


def _check_critic(target: str, options: dict) -> None:
    """A judge VLMEvalKit can build: a ``supported_VLM`` name, or a config dict whose class it has."""
    model = options.get("model")
    if model is not None:
        import vlmeval.api
        import vlmeval.vlm

        if not isinstance(model, dict) or not any(
            hasattr(m, str(model.get("class"))) for m in (vlmeval.vlm, vlmeval.api)
        ):
            raise ValueError(
                'the critic option "model" must be a config dict whose "class" is in vlmeval.vlm or vlmeval.api'
            )
        return
    from vlmeval.config import supported_VLM

    if target not in supported_VLM:
        import difflib

        close = difflib.get_close_matches(target, list(supported_VLM), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f'no VLMEvalKit model {target!r}{hint}; name a supported_VLM model or give the option "model"')


#: backend -> check of its target (and options), run by validate_spec.
_CHECKS = {
    "transformers": _check_checkpoint,
    "lmdeploy": _check_servers,
    "vllm": _check_vllm_servers,
    "critic": _check_critic,
}
