"""Registration into VLMEvalKit's own registries, run by the startup hook after ``vlmeval.config``.

Adds: ``<name>-BoN<N>`` for every model in ``supported_VLM`` (N in ``BON_SIZES``); the demo's local
models (trained and tiny), only when ``VLMEVAL_PRM_DEMO=1`` (``vlmeval-prm demo`` and the tests set it); the plugin's
datasets (first in ``DATASET_CLASSES`` so their names resolve to them);
``BestOfN``/``TransformersChat``/``PRMJudge`` as ``vlmeval.vlm`` attributes for ``--config`` JSON.
In a ``vlmeval.run`` process it then checks the ``--model`` names that are this plugin's and stops the
run before any work when one cannot be built (``check_run_names``).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import itertools
import json
import os
import re
import sys
from functools import partial

from vlmeval_prm.constants import DEFAULT_PRM_SPEC, DEMO_ENV, OPTIONS_ENV, SPEC_ENV
from vlmeval_prm.demo.paths import prm_path as shapes_prm_path
from vlmeval_prm.logs import get_logger

log = get_logger(__name__)

BON_SIZES = (2, 4, 8, 16, 32, 64)
TINY_POLICY = "VLMEvalPRM-TinyPolicy"
TINY_PRM = "VLMEvalPRM-TinyPRM"
TINY_PRM_SPEC = "transformers:tiny:prm"
#: The demo's policy trained on its synthetic task; its Best-of-N names score with the PRM trained with it.
SHAPES_POLICY = "VLMEvalPRM-ShapesPolicy"


class LazyClass:
    """Stands in for one of our classes until it is called.

    Registration then imports nothing of ours that needs vlmeval, which keeps it fast and free of
    import cycles (importing ``vlmeval_prm.host.bon`` first imports vlmeval, which runs this plugin).
    VLMEvalKit only ever calls what it finds in ``supported_VLM`` or ``vlmeval.vlm``.
    """

    def __init__(self, target: str):
        self.target = target
        self.__name__ = target.rpartition(":")[2]

    def resolve(self) -> type:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<lazy {self.target}>"


BestOfN = LazyClass("vlmeval_prm.host.bon:BestOfN")
PRMSearch = LazyClass("vlmeval_prm.host.search_model:PRMSearch")
TransformersChat = LazyClass("vlmeval_prm.policy.transformers_chat:TransformersChat")
PRMJudge = LazyClass("vlmeval_prm.host.prm_judge:PRMJudge")

#: Models that are PRMs, not policies: no Best-of-N names for them. ``VLMEVAL_PRM_SPEC`` overrides the spec.
PRM_MODELS = {
    "VisualPRM-8B": partial(PRMJudge, prm=DEFAULT_PRM_SPEC, spec_env=SPEC_ENV),
    TINY_PRM: partial(PRMJudge, prm=TINY_PRM_SPEC, spec_env=SPEC_ENV),
}
POLICY_MODELS = {
    TINY_POLICY: partial(TransformersChat, model_path="tiny:policy", max_new_tokens=48),
    SHAPES_POLICY: partial(LazyClass("vlmeval_prm.demo.models:ShapesPolicy")),
}
#: The demo's tiny random models: not for real use, so absent unless the demo asks for them.
DEMO_MODELS = frozenset({TINY_POLICY, TINY_PRM, SHAPES_POLICY})


def demo_enabled() -> bool:
    return os.environ.get(DEMO_ENV) == "1"


def bon_name(base: str, n: int) -> str:
    return f"{base}-BoN{n}"


#: Search methods with registered names, by their name tag: ``<model>-Beam<W>x<N>``, ``<model>-DVTS<W>x<N>``.
SEARCH_TAGS = {"beam": "Beam", "dvts": "DVTS"}
#: (W, N) of the registered search names: W beams kept (or subtrees), N completions per depth.
SEARCH_SIZES = ((2, 4), (2, 8), (4, 16))


def search_name(base: str, method: str, width: int, n: int) -> str:
    return f"{base}-{SEARCH_TAGS.get(method, method)}{width}x{n}"


#: ``BestOfN`` keyword arguments ``VLMEVAL_PRM_OPTIONS`` may set (tests check them against its signature).
BON_OPTIONS = (
    "prm_options",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "first_greedy",
    "aggregate",
    "batch_size",
    "max_steps",
    "step_prompt",
    "orm",
    "retry_failed",
)
#: Keys a registered name fixes itself, with what to do instead.
RESERVED_OPTIONS = {
    "model": "is the name's base model (<model>-BoN<N>)",
    "n": "is the N of the name (<model>-BoN<N>)",
    "name": "is the registered name itself",
    "prm": f"is set by {SPEC_ENV}",
}


class OptionsError(ValueError):
    """``VLMEVAL_PRM_OPTIONS`` is not a valid set of BestOfN options."""


def bon_options() -> dict:
    """Extra BestOfN settings for registered names, from ``VLMEVAL_PRM_OPTIONS`` (a JSON object of
    ``BON_OPTIONS``). Raises OptionsError naming the variable; never echoes its value, which may hold
    a key in ``prm_options``."""
    raw = os.environ.get(OPTIONS_ENV)
    if not raw:
        return {}
    try:
        opts = json.loads(raw)
    except ValueError as exc:
        raise OptionsError(f"{OPTIONS_ENV} is not valid JSON: {exc}") from None
    if not isinstance(opts, dict):
        raise OptionsError(f"{OPTIONS_ENV} must be a JSON object of BestOfN options, got a {type(opts).__name__}")
    problems = [f"{key!r} {why}" for key, why in RESERVED_OPTIONS.items() if key in opts]
    for key in sorted(k for k in opts if k not in BON_OPTIONS and k not in RESERVED_OPTIONS):
        close = difflib.get_close_matches(key, BON_OPTIONS, n=1)
        problems.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if problems:
        raise OptionsError(
            f"{OPTIONS_ENV}: {'; '.join(problems)}. Valid keys: {', '.join(BON_OPTIONS)} "
            "(base model settings go in a --config JSON)"
        )
    return opts


class RefuseToBuild:
    """Registered in place of BestOfN when ``VLMEVAL_PRM_OPTIONS`` is invalid: VLMEvalKit's import and
    every other model stay intact, and building a Best-of-N model raises the error, before any model
    loads."""

    __name__ = "BestOfN"

    def __init__(self, error: str):
        self.error = error

    def __call__(self, *args, **kwargs):
        raise OptionsError(self.error)

    def __repr__(self) -> str:
        return f"<BestOfN refused: {self.error}>"


# ------------------------------------------------------------------------------------------ names

#: ``<base>-BoN<N>``; the suffix is matched case-blind, so ``-bon8`` is diagnosed as a typo of ours.
BON_NAME = re.compile(r"(?P<base>.+)-bon(?P<n>[0-9]+)", re.IGNORECASE)
#: The prefix of the demo's names: every name that starts with it is this plugin's.
DEMO_PREFIX = "VLMEvalPRM-"
#: Exit status of a ``vlmeval.run`` stopped for its model names (argparse's status for a bad argument).
NAME_EXIT_STATUS = 2


def _close(word: str, names) -> list[str]:
    """Up to three near names, case-blind (``internvl2_5-8b`` finds ``InternVL2_5-8B``)."""
    by_lower: dict[str, str] = {}
    for name in names:
        by_lower.setdefault(name.lower(), name)
    if word.lower() in by_lower:
        return [by_lower[word.lower()]]
    return [by_lower[m] for m in difflib.get_close_matches(word.lower(), list(by_lower), n=3, cutoff=0.6)]


def _did_you_mean(names: list[str]) -> str:
    return f" Did you mean {' or '.join(repr(n) for n in names)}?" if names else ""


def _n_hint(name: str, base: str | None, n: int) -> str:
    """N out of ``BON_SIZES``: the sizes, and (for a known base) the ``--config`` entry for this N."""
    hint = f"N={n} is not a registered size: the -BoN<N> names have N in {', '.join(map(str, BON_SIZES))}."
    if base is None:
        return hint
    entry = json.dumps({name: {"class": "BestOfN", "model": base, "n": n}})
    return f'{hint} For any other N use a --config JSON, e.g. {{"model": {entry}, "data": {{...}}}}.'


def name_problem(name: str, supported_VLM: dict) -> str | None:
    """Why ``name`` cannot be built, and what to do, when it is this plugin's name (``<model>-BoN<N>``
    or ``VLMEvalPRM-*``): an unknown base model (with a did-you-mean), a demo name without
    ``VLMEVAL_PRM_DEMO=1``, an N that is not in ``BON_SIZES``, a PRM as the base, or a name that refuses
    to build (invalid ``VLMEVAL_PRM_OPTIONS``). None when the name is fine, or is not ours (VLMEvalKit
    reports those itself)."""
    listing = "Run `vlmeval-prm models` to list the models; each has the names <model>-BoN<N>."
    factory = supported_VLM.get(name)
    if factory is not None:
        refused = getattr(factory, "func", None)
        return refused.error if isinstance(refused, RefuseToBuild) else None
    demo = demo_enabled()
    switch = (
        f"The demo's names exist only with {DEMO_ENV}=1 set: rerun with it, e.g. `{DEMO_ENV}=1 python -m "
        "vlmeval.run ...` (`vlmeval-prm demo` and `vlmeval-prm serve --demo` set it themselves)."
    )
    match = BON_NAME.fullmatch(name)
    if match is None:
        if not name.startswith(DEMO_PREFIX):
            return None  # not ours
        if name in DEMO_MODELS and not demo:
            return f"{name!r} is a demo model. {switch}"
        ours = [*DEMO_MODELS, *(bon_name(b, n) for b in POLICY_MODELS for n in BON_SIZES)]
        return f"{name!r} is not a name of this plugin.{_did_you_mean(_close(name, ours))} {listing}"
    base, n = match["base"], int(match["n"])
    if base in PRM_MODELS:
        return (
            f"{base!r} is a PRM, not a policy, so it has no Best-of-N names: use a policy's "
            f"<model>-BoN<N> name, with {SPEC_ENV} naming the PRM. {listing}"
        )
    bases = [k for k in supported_VLM if not BON_NAME.fullmatch(k) and k not in PRM_MODELS]
    bases += [b for b in POLICY_MODELS if b not in supported_VLM]  # demo bases, known even when off
    problems = []
    if base not in bases:
        size = n if n in BON_SIZES else min(BON_SIZES, key=lambda s: (abs(s - n), s))
        guess = _did_you_mean([bon_name(b, size) for b in _close(base, bases)])
        problems.append(f"{base!r} is not a model in VLMEvalKit's supported_VLM, so it has no Best-of-N names.{guess}")
    elif base in DEMO_MODELS and not demo:
        problems.append(f"{name!r} is a demo name. {switch}")
    elif n in BON_SIZES and name != bon_name(base, n):
        problems.append(f"the suffix is -BoN<N>, with a capital B and N.{_did_you_mean([bon_name(base, n)])}")
    if n not in BON_SIZES:
        problems.append(_n_hint(bon_name(base, n), base if base in bases else None, n))
    if base not in bases:
        problems.append(listing)
    if not problems:  # base and N are fine, yet the name is missing: its registration failed
        return f"{name!r} was not registered: see the plugin's error above. {listing}"
    return " ".join(problems)


def requested_names(argv: list[str]) -> list[str]:
    """The model names a ``vlmeval.run`` command line will look up in ``supported_VLM``: ``--model``
    names, or the ``--config`` entries without ``"class"``. Empty when no lookup happens (``--mode
    eval`` reads stored predictions, ``--base-url`` serves the name) or the line cannot be read (run.py
    then reports it itself)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--model", nargs="+")
    parser.add_argument("--config")
    parser.add_argument("--mode")
    parser.add_argument("--base-url")
    try:
        args, _ = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return []
    if args.mode == "eval" or args.base_url:
        return []
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                models = json.load(f).get("model")
        except (OSError, ValueError, AttributeError):
            return []  # not ours to report: run.py says what is wrong with the file
        if not isinstance(models, dict):
            return []
        return [k for k, v in models.items() if isinstance(v, dict) and "class" not in v]
    return list(args.model or [])


def _dash_m_module(orig_argv: list[str]) -> str | None:
    """The module of ``python [options] -m MODULE ...`` (``sys.orig_argv``), else None."""
    args = iter(orig_argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None)
        if arg.startswith("-m") and not arg.startswith("--"):
            return arg[2:]
        if arg in ("-X", "-W", "-c"):  # options that take a value; -c also ends the options
            if arg == "-c":
                return None
            next(args, None)
        elif not arg.startswith("-") or arg == "-":
            return None  # a script: no -m
    return None


def is_run_main() -> bool:
    """Whether this process is VLMEvalKit's run script: ``python -m vlmeval.run`` (``torchrun -m
    vlmeval.run`` too), or ``python``/``torchrun`` given the path of a ``run.py`` that is vlmeval's
    own or sits beside a ``vlmeval`` package (a VLMEvalKit checkout).

    With ``-m``, Python imports the package ``vlmeval`` to find ``vlmeval.run``, and vlmeval's
    ``__init__`` imports its config: this plugin runs before run.py does, while ``sys.argv[0]`` is
    still ``"-m"`` (the module it looks for is then in ``sys.orig_argv``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return spec.name == "vlmeval.run"
    if sys.argv[:1] == ["-m"]:
        return _dash_m_module(getattr(sys, "orig_argv", [])) == "vlmeval.run"
    path = getattr(main, "__file__", None)
    if not path or os.path.basename(path) != "run.py":
        return False
    path = os.path.realpath(path)
    vlmeval = sys.modules.get("vlmeval")
    own = getattr(vlmeval, "__file__", None)
    if own and path == os.path.join(os.path.dirname(os.path.realpath(own)), "run.py"):
        return True
    return os.path.isfile(os.path.join(os.path.dirname(path), "vlmeval", "config.py"))


def check_run_names(supported_VLM: dict) -> None:
    """Stop a ``vlmeval.run`` process whose ``--model`` names this plugin owns but cannot build.

    Without it, run.py looks a name up only when it reaches the model, after it built the dataset and
    wrote its run files; the ``KeyError`` is caught, logged as a traceback, and the run exits 0.
    Registration runs when vlmeval's config is first imported: with ``python -m vlmeval.run`` while
    Python imports the package ``vlmeval`` to find run.py, with ``python run.py`` (each ``torchrun``
    rank) at run.py's own imports; either way before run.py parses its arguments or writes a file. So
    here, with every name registered, the command line is read as run.py will read it
    (``requested_names``) and every name of ours that would fail is reported at once: which case it is
    and what to do (``name_problem``). Then the process ends with status 2 before any work (torchrun
    then stops the other ranks and fails). Names that are not ours stay VLMEvalKit's business.

    The exit is ``os._exit`` because the startup hook deliberately turns a plugin's ``SystemExit``
    into a warning (a plugin must not stop vlmeval); nothing has run yet, so there is nothing to clean
    up, and the message is written and stdout/stderr flushed first.
    Any other process that imports vlmeval (``vlmeval-prm``, tests, a notebook, ``vlmeval.run``
    imported as a module) is never checked."""
    if not is_run_main():
        return
    problems = [(name, why) for name in requested_names(sys.argv[1:]) if (why := name_problem(name, supported_VLM))]
    if not problems:
        return
    if os.environ.get("RANK", "0") == "0":  # torchrun: every rank stops, one reports
        for name, why in problems:
            log.error("cannot run model %s: %s", name, why)
        log.error("nothing was run (exit status %d)", NAME_EXIT_STATUS)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(NAME_EXIT_STATUS)


def register_models(supported_VLM: dict) -> None:
    demo = demo_enabled()
    for name, factory in {**POLICY_MODELS, **PRM_MODELS}.items():
        if demo or name not in DEMO_MODELS:
            supported_VLM.setdefault(name, factory)


def register_bon(supported_VLM: dict) -> None:
    try:
        opts, factory = bon_options(), BestOfN
    except OptionsError as exc:
        log.error("%s; every -BoN<N> name will refuse to build until it is fixed", exc)
        opts, factory = {}, RefuseToBuild(str(exc))
    demo_prms = {
        TINY_POLICY: os.environ.get(SPEC_ENV, TINY_PRM_SPEC),
        SHAPES_POLICY: os.environ.get(SPEC_ENV, f"transformers:{shapes_prm_path()}"),
    }
    for base in [k for k in supported_VLM if "-BoN" not in k and k not in PRM_MODELS]:
        extra = {"prm": demo_prms[base]} if base in demo_prms else {}
        for n in BON_SIZES:
            supported_VLM.setdefault(
                bon_name(base, n), partial(factory, model=base, n=n, name=bon_name(base, n), **extra, **opts)
            )


def register_search(supported_VLM: dict) -> None:
    """``-Beam<W>x<N>``/``-DVTS<W>x<N>`` names for the models whose step extension the plugin drives (the demo
    policies); any other ``TransformersChat`` model searches through ``--config`` (``"class": "PRMSearch"``)."""
    demo_prms = {
        TINY_POLICY: os.environ.get(SPEC_ENV, TINY_PRM_SPEC),
        SHAPES_POLICY: os.environ.get(SPEC_ENV, f"transformers:{shapes_prm_path()}"),
    }
    for base, prm in demo_prms.items():
        if base not in supported_VLM:
            continue
        for method, (width, n) in itertools.product(SEARCH_TAGS, SEARCH_SIZES):
            name = search_name(base, method, width, n)
            supported_VLM.setdefault(
                name, partial(PRMSearch, model=base, method=method, width=width, n=n, name=name, prm=prm)
            )


def register_classes() -> None:
    """``"class": "BestOfN"`` (etc.) in ``--config`` JSON resolves through ``vlmeval.vlm``."""
    import vlmeval.vlm

    for cls in (BestOfN, TransformersChat, PRMJudge, PRMSearch):
        if not hasattr(vlmeval.vlm, cls.__name__):
            setattr(vlmeval.vlm, cls.__name__, cls)


def register_datasets() -> None:
    """When one of our dataset modules was the first importer of vlmeval, the datasets package is
    still initialising here; it registers itself once complete (``vlmeval_prm.datasets``)."""
    package = sys.modules.get("vlmeval_prm.datasets")
    if package is not None and not hasattr(package, "register"):
        return
    from vlmeval_prm.datasets import register

    register()


def wrap_inference() -> None:
    import vlmeval.inference as inference

    from vlmeval_prm.host.run_context import wrap_api_pipeline, wrap_infer_data, wrap_infer_data_job

    inference.infer_data = wrap_infer_data(inference.infer_data)
    inference.infer_data_job = wrap_infer_data_job(inference.infer_data_job)  # before run.py imports it
    try:  # ms-vlmeval's --api-mode pipeline; absent from upstream VLMEvalKit
        from vlmeval.inference_api import APIEvalPipeline
    except ImportError:
        return
    wrap_api_pipeline(APIEvalPipeline)


def register() -> None:
    """Entry point of group ``vlmeval.plugins``. Each part fails alone, with one logged error."""
    from vlmeval.config import supported_VLM

    steps = (
        partial(register_models, supported_VLM),
        register_classes,
        register_datasets,
        wrap_inference,
        partial(register_bon, supported_VLM),
        partial(register_search, supported_VLM),
    )
    for step in steps:
        try:
            step()
        except Exception as exc:
            log.error("%s failed: %s: %s", getattr(step, "func", step).__name__, type(exc).__name__, exc)
    try:
        check_run_names(supported_VLM)
    except Exception as exc:  # a check that fails leaves the run to VLMEvalKit, as before
        log.error("check_run_names failed: %s: %s", type(exc).__name__, exc)


# BoN names are derived from every model, including other plugins': run after them.
register.vlmeval_plugin_order = 100
