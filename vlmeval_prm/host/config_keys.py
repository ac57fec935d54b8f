"""Keys of a Best-of-N model config, checked when the model is built, before any weights load.

``BestOfN`` passes every key it does not name to the base model. VLMEvalKit's classes take
``**kwargs``: local families hand them to ``generate`` (a typo such as ``"nn"`` for ``"n"`` then fails
every candidate with transformers' "model_kwargs are not used"), API families put them in each
request. So a key must be the wrapper's, a named argument of the base class's constructor, a key that
constructor reads from its ``**kwargs``, a generation setting (local families), or, for API families,
anything that is not a near miss of the wrapper's own keys.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
import textwrap
from collections.abc import Iterable

#: Keys VLMEvalKit itself adds when it builds a model (``infer_data``'s ``use_vllm``, FACTS §5).
INJECTED_KEYS = frozenset({"use_vllm"})
#: ``kwargs.pop("x"``, ``kwargs.get("x"``, ``kwargs["x"]`` in a constructor's source.
_KWARGS_READ = re.compile(r"""kwargs(?:\.(?:pop|get|setdefault)\(|\[)\s*['"](\w+)['"]""")
#: ``super().__init__(..., **kwargs)``: the constructor hands unknown keys on to its base class.
_FORWARDS_KWARGS = re.compile(r"super\(\)\.__init__\([^)]*\*\*kwargs")


def base_class(model) -> type:
    """The class a ``supported_VLM`` name or a ``--config`` dict (with ``class``) builds."""
    from vlmeval_prm.policy.catalog import factory_spec

    if isinstance(model, dict):
        import vlmeval.api
        import vlmeval.vlm

        name = model.get("class")
        for module in (vlmeval.vlm, vlmeval.api):
            if hasattr(module, name or ""):  # a class, or this plugin's lazy stand-in for one
                return factory_spec(getattr(module, name)).cls
        raise ValueError(f"base model class {name!r} is not in vlmeval.vlm or vlmeval.api")
    from vlmeval.config import supported_VLM

    if model not in supported_VLM:
        raise KeyError(f"base model {model!r} is not in VLMEvalKit's supported_VLM")
    return factory_spec(supported_VLM[model]).cls


@functools.cache
def constructor_keys(cls: type) -> tuple[frozenset[str], bool]:
    """Named constructor arguments of ``cls`` (and of each base its ``**kwargs`` reaches through
    ``super().__init__(**kwargs)``), keys read from ``kwargs`` in those constructors, and whether
    unknown keys are accepted at all (the last constructor takes ``**kwargs``)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
        try:
            source = textwrap.dedent(inspect.getsource(init))
        except (OSError, TypeError):
            source = ""
        names |= set(_KWARGS_READ.findall(source))
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
        if not (takes_kwargs and _FORWARDS_KWARGS.search(source)):
            return frozenset(names), takes_kwargs
    return frozenset(names), False


@functools.cache
def generation_keys() -> frozenset[str]:
    """What transformers' ``generate`` accepts as settings (``GenerationConfig`` attributes)."""
    from transformers import GenerationConfig

    return frozenset(GenerationConfig().to_dict())


def _is_api(cls: type) -> bool:
    return any(klass.__name__ == "BaseAPI" for klass in cls.__mro__) or bool(getattr(cls, "is_api", False))


def check_keys(model, keys: Iterable[str], wrapper_keys: Iterable[str], wrapper: str = "BestOfN") -> None:
    """Raise ``ValueError`` naming every key that neither ``wrapper`` nor the base class takes, with a
    did-you-mean, before anything is built."""
    cls = base_class(model)
    named, takes_kwargs = constructor_keys(cls)
    wrapper_keys = set(wrapper_keys)
    known = wrapper_keys | named | INJECTED_KEYS
    api = _is_api(cls)
    bad = []
    for key in keys:
        if key in known:
            continue
        near = difflib.get_close_matches(key, sorted(wrapper_keys), n=1, cutoff=0.6)
        if takes_kwargs and not near and (api or key in generation_keys()):
            continue  # a request option (API) or a generation setting (local) for the base model
        pool = sorted(known | (generation_keys() if takes_kwargs and not api else set()))
        guess = near or difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        bad.append(f"{key!r}" + (f" (did you mean {guess[0]!r}?)" if guess else ""))
    if bad:
        raise ValueError(
            f"{wrapper} config: {', '.join(bad)} is not an option of {wrapper} nor of {cls.__name__}'s "
            f"constructor; {wrapper} takes {', '.join(sorted(wrapper_keys))}"
        )
