"""The sampling route of every ``supported_VLM`` name, from the adapter registry (``vlmeval-prm models``).

A name's factory is a ``functools.partial`` of a VLMEvalKit class (or one of this plugin's lazy
classes) with constructor kwargs; the route comes from the same ``SamplingAdapter.route`` that
``BestOfN`` runs on the built model, read through a :class:`ModelSpec` instead of a built model.

Families whose sampling depends on the transformers line (``TRANSFORMERS_FACTS``, one table) also
get a ``transformers`` verdict for the installed version: whether they sample on it, what the plugin
repairs for it, and which line works where it does not.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from vlmeval_prm.policy.base import ModelSpec, Route, SamplingAdapter, register_adapter, route_of
from vlmeval_prm.policy.step_extension import refusal
from vlmeval_prm.search import METHODS

#: The transformers lines the project supports (``transformers>=4.57``) and measures in CI (.ci/run
#: runs the remote-code and policy tests in a second venv on the newest 4.57.x): (line, major, minor),
#: minor None for the whole major line.
TRANSFORMERS_LINES = (("4.57.x", 4, 57), ("5.x", 5, None))


@dataclass(frozen=True)
class LineVerdict:
    """How a family fares on one transformers line: ``works`` (it samples, after ``repair`` when that
    is set: what the plugin does at load for it) and ``why`` (the measured cause)."""

    works: bool
    why: str
    repair: str | None = None


@dataclass(frozen=True)
class TransformersFact:
    """One row of ``TRANSFORMERS_FACTS``: a VLMEvalKit class (matched along the MRO by name), the
    checkpoints it applies to (``model_path`` basenames, each matched as a whole or followed by ``-`` or
    ``_``; empty: every checkpoint), the verdict per line of ``TRANSFORMERS_LINES``, and what to use where it
    does not work."""

    family: str
    cls: str
    lines: dict[str, LineVerdict]
    checkpoints: tuple[str, ...] = ()
    #: What to use on a line where it does not work, when no supported line works.
    needs: str = ""

    def matches(self, spec: ModelSpec) -> bool:
        if self.cls not in {k.__name__ for k in spec.cls.__mro__}:
            return False
        if not self.checkpoints:
            return True
        base = str(spec.get("model_path", "") or "").rstrip("/").rsplit("/", 1)[-1]
        return any(re.fullmatch(rf"{re.escape(c)}([-_].*)?", base, flags=re.IGNORECASE) for c in self.checkpoints)


_LLAVA_NEXT_WHY = (
    "VLMEvalKit's LLaVA_Next.generate_inner calls self.processor(prompt, images) positionally; the "
    "processors take (images, text) and no longer swap them, so the prompt is read as an image source "
    "(ValueError: Incorrect image source); measured on transformers 4.57.6 and 5.25.0"
)
_INTERNLM2_REPAIR = (
    "vlmeval_prm.remote_code: the RoPE buffers (inv_freq, cos_cached, sin_cached) are checked against "
    "the checkpoint's own code and recomputed, and transformers' GenerationMixin (with the generation "
    "inputs remote code had before 4.50) is added to InternLM2ForCausalLM and checked by a generate probe, "
    "when Best-of-N builds the policy; a model that fails either check is refused"
)

#: Families that sample on some transformers lines only, or only after the plugin's repair at load.
#: Measured: InternVL's real remote code (tiny InternViT + InternLM2 checkpoints built from
#: OpenGVLab/InternVL's modelling files) on 4.57.6 and 5.25, the pattern held by tests/test_remote_code.py
#: with a stand-in on both lines; the LLaVA_Next processor call, reproduced on the installed line by
#: tests/test_catalog_versions.py.
TRANSFORMERS_FACTS: tuple[TransformersFact, ...] = (
    TransformersFact(
        family="LLaVA-NeXT (VLMEvalKit LLaVA_Next)",
        cls="LLaVA_Next",
        lines={"4.57.x": LineVerdict(False, _LLAVA_NEXT_WHY), "5.x": LineVerdict(False, _LLAVA_NEXT_WHY)},
        needs="no line this project supports (transformers>=4.57); a VLMEvalKit whose LLaVA_Next passes "
        "images= and text= by keyword, or the HF-native LLaVA_OneVision_HF family",
    ),
    TransformersFact(
        family="InternVL on InternLM2 (remote code: InternVL-Chat-V1-5, InternVL2/2.5 2B, 8B, 26B)",
        cls="InternVLChat",
        checkpoints=(
            "InternVL-Chat-V1-5",
            "Mini-InternVL-Chat-2B-V1-5",
            "InternVL2-2B",
            "InternVL2-8B",
            "InternVL2-26B",
            "InternVL2_5-2B",
            "InternVL2_5-8B",
            "InternVL2_5-26B",
            "internvl2_5_8b_internlm2_5_7b",
        ),
        lines={
            "4.57.x": LineVerdict(
                True,
                "the RoPE buffers load correctly; InternLM2ForCausalLM has no generate (PreTrainedModel is no "
                "longer a GenerationMixin since 4.50)",
                repair=_INTERNLM2_REPAIR,
            ),
            "5.x": LineVerdict(
                True,
                "from_pretrained leaves InternLM2's non-persistent RoPE buffers uninitialised (wrong output, no "
                "error) and InternLM2ForCausalLM has no generate",
                repair=_INTERNLM2_REPAIR,
            ),
        },
    ),
)


def transformers_line(version: str) -> str | None:
    """The ``TRANSFORMERS_LINES`` entry ``version`` belongs to, None for a line not measured."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        return None
    major, minor = int(m.group(1)), int(m.group(2))
    for line, lmajor, lminor in TRANSFORMERS_LINES:
        if major == lmajor and (lminor is None or minor == lminor):
            return line
    return None


def installed_transformers() -> str | None:
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:  # not installed: no verdict to give
        return None


def transformers_verdict(spec: ModelSpec, version: str | None) -> dict | None:
    """The ``transformers`` entry of a name's record for transformers ``version`` (the installed one in
    ``vlmeval-prm models``), None for a family whose sampling does not depend on the line."""
    fact = next((f for f in TRANSFORMERS_FACTS if f.matches(spec)), None)
    if fact is None or version is None:
        return None
    line = transformers_line(version)
    verdict = fact.lines.get(line) if line else None
    works_on = [name for name, v in fact.lines.items() if v.works]
    rec = {"installed": version, "line": line, "works": None if verdict is None else verdict.works}
    if verdict is None:
        rec["why"] = f"not measured on transformers {version}; measured lines: {', '.join(fact.lines)}"
    else:
        rec["why"] = verdict.why
        if verdict.repair:
            rec["repair"] = verdict.repair
    if verdict is None or not verdict.works:
        rec["needs"] = f"transformers {' or '.join(works_on)}" if works_on else fact.needs
    rec["family"] = fact.family
    return rec


@dataclass(frozen=True)
class ModelRoute:
    """One row of ``vlmeval-prm models --json``; ``transformers`` only for the families of
    ``TRANSFORMERS_FACTS``."""

    name: str
    cls: str
    route: str
    reason: str
    transformers: dict | None = field(default=None, compare=False)
    #: PRM-guided search (``-Beam<W>x<N>``, ``PRMSearch``): "beam, dvts, best_of_n", or why not.
    search: str = field(default="", compare=False)

    def to_record(self) -> dict:
        rec = asdict(self)
        rec["class"] = rec.pop("cls")
        out = {k: rec[k] for k in ("name", "class", "route", "reason")}
        if self.transformers is not None:
            out["transformers"] = self.transformers
        if self.search:
            out["search"] = self.search
        return out


@register_adapter("PRMJudge")
class JudgeAdapter(SamplingAdapter):
    """This plugin's PRM judges (``VisualPRM-8B``): they score answers, they do not write them."""

    name = "prm_judge"

    def route(self, model: Any) -> Route:
        return Route("unsupported", f"{self.name}: a process reward model used as a judge, not a policy")


def factory_spec(factory: Any) -> ModelSpec:
    """Class and kwargs of a ``supported_VLM`` value (a partial, a class, or a lazy class)."""
    kwargs: dict = {}
    if isinstance(factory, functools.partial):
        factory, kwargs = factory.func, dict(factory.keywords)
    resolve = getattr(factory, "resolve", None)  # host.plugin.LazyClass
    if callable(resolve) and not isinstance(factory, type):
        factory = resolve()
    if not isinstance(factory, type):
        raise TypeError(f"{factory!r} is not a class")
    return ModelSpec(factory, kwargs)


#: Names that ``vlmeval.inference.infer_data`` builds with ``use_vllm=<--use-vllm>`` (ms-vlmeval 0.0.20).
VLLM_NAME_PARTS = ("Llama-4", "Qwen2-VL", "Qwen2.5-VL")


_INSTALLED = object()


def model_routes(
    supported_vlm: dict,
    use_vllm: bool = False,
    skip_classes: tuple[str, ...] = ("BestOfN", "PRMSearch"),
    transformers_version: Any = _INSTALLED,
) -> list[ModelRoute]:
    """Every name whose class is not in ``skip_classes`` (the Best-of-N names derived from the others),
    built as ``vlmeval.run`` would build it (``use_vllm``: its ``--use-vllm`` flag), with the verdict of
    ``TRANSFORMERS_FACTS`` for ``transformers_version`` (default: the installed one; None: no verdicts)."""
    version = installed_transformers() if transformers_version is _INSTALLED else transformers_version
    out = []
    for name, factory in supported_vlm.items():
        try:
            spec = factory_spec(factory)
        except Exception as exc:  # a broken entry is reported, not skipped
            out.append(ModelRoute(name, "?", "unsupported", f"cannot read its factory: {type(exc).__name__}: {exc}"))
            continue
        if spec.cls.__name__ in skip_classes:
            continue
        if use_vllm and any(part in name for part in VLLM_NAME_PARTS):
            spec = ModelSpec(spec.cls, {**spec.kwargs, "use_vllm": True})
        _, route = route_of(spec)
        verdict = transformers_verdict(spec, version)
        search = "unsupported" if route.route == "unsupported" else (refusal(spec.cls) or ", ".join(sorted(METHODS)))
        out.append(ModelRoute(name, spec.cls.__name__, route.route, route.reason, verdict, search))
    return out
