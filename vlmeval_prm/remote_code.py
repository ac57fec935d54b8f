"""Make a remote-code model that transformers has loaded correct, or refuse it.

Two ways InternVL's remote code (VisualPRM-8B, InternVL2.5-8B: an InternLM2 language model in the
checkpoint's own ``modeling_internlm2.py``) goes wrong on current transformers, read from
OpenGVLab/InternVL at 2410d1dbf208f0e799459aff9376e5747dbf41a2,
``internvl_chat/internvl/model/internlm2/modeling_internlm2.py``:

* On 5.x ``from_pretrained`` builds the model on the meta device and fills every non-persistent
  buffer with ``torch.empty_like``; only transformers' own ``_init_weights`` refill RoPE buffers, and
  InternLM2's (Linear and Embedding only) does not. ``inv_freq``/``cos_cached``/``sin_cached`` then
  hold uninitialised memory and every score is wrong, silently. ``repair_buffers`` recomputes every
  non-persistent buffer with the module's own ``__init__`` and copies the correct values in.
* From 4.50 on ``PreTrainedModel`` is no longer a ``GenerationMixin``; ``InternLM2ForCausalLM``
  defines ``prepare_inputs_for_generation`` but not ``generate``, which InternVLChatModel.generate
  calls (``internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py``).
  ``ensure_generate`` adds the mix-in, with the generation inputs transformers gave remote code
  before 4.50 (the mix-in alone fails on 4.57 and 5.x), and proves it with a probe, or refuses.

Anything that cannot be checked or made right raises ``RemoteCodeError`` naming the checkpoint, the
installed transformers and the line known to work.
"""

from __future__ import annotations

import contextlib
import copy

from vlmeval_prm.logs import get_logger

log = get_logger(__name__)

#: The transformers line on which InternLM2-based InternVL checkpoints (VisualPRM-8B, InternVL2.5-8B)
#: are known to load correctly in-process (FACTS §9, and tests/test_remote_code.py on both lines).
KNOWN_GOOD_TRANSFORMERS = "4.57.x"
#: Where classes loaded from a checkpoint's own files live (transformers' dynamic module cache).
REMOTE_MODULE_PREFIX = "transformers_modules"
#: Greedy tokens the generate probe compares.
PROBE_TOKENS = 3

_MIXED: dict[type, type] = {}


class RemoteCodeError(ValueError):
    """A remote-code model that cannot be verified or made to work under the installed transformers."""


def _refusal(checkpoint: str, problem: str) -> RemoteCodeError:
    import transformers

    return RemoteCodeError(
        f"{checkpoint}: {problem} (transformers {transformers.__version__}); InternLM2-based InternVL "
        f"checkpoints such as VisualPRM-8B and InternVL2.5-8B are known to work with transformers "
        f"{KNOWN_GOOD_TRANSFORMERS}"
    )


def is_remote(module) -> bool:
    """True when ``module``'s class comes from a checkpoint's own modelling files."""
    return type(module).__module__.startswith(REMOTE_MODULE_PREFIX)


def _non_persistent_buffers(model) -> dict:
    """Full name -> (owning module, local name) of every non-persistent buffer."""
    found = {}
    for prefix, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            if module._buffers.get(name) is not None:
                found[f"{prefix}.{name}" if prefix else name] = (module, name)
    return found


def _model_dtype(model):
    import torch

    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _fresh_buffers(model, checkpoint: str) -> dict:
    """Non-persistent buffers as the model's own ``__init__`` computes them: a skeleton of the same
    class from the same config, parameters on meta, buffers real, on the CPU, under the default dtype
    ``from_pretrained`` built the model with (its parameters' dtype)."""
    import torch
    from accelerate import init_empty_weights

    # a class that ensure_generate extended is rebuilt as the remote class it extends
    cls = next((c for c in type(model).__mro__ if c not in _MIXED.values()), type(model))
    try:
        with _default_dtype(_model_dtype(model)), torch.device("cpu"), init_empty_weights(include_buffers=False):
            skeleton = cls(copy.deepcopy(model.config))
    except Exception as exc:
        raise _refusal(
            checkpoint, f"cannot rebuild {cls.__name__} to check its buffers ({type(exc).__name__}: {exc})"
        ) from exc
    return {name: module._buffers[local] for name, (module, local) in _non_persistent_buffers(skeleton).items()}


def _agrees(loaded, fresh) -> bool:
    """Whether ``loaded`` holds ``fresh`` (cast to its dtype), to a few units of its precision."""
    import torch

    fresh = fresh.to(loaded.device, loaded.dtype)
    if not loaded.is_floating_point():
        return torch.equal(loaded, fresh)
    tol = 4 * torch.finfo(loaded.dtype).eps
    return bool(torch.isfinite(loaded).all()) and torch.allclose(loaded.float(), fresh.float(), rtol=tol, atol=tol)


def repair_buffers(model, checkpoint: str) -> list[str]:
    """Check every non-persistent buffer of ``model`` against a fresh computation by its own code and
    copy the correct value into each one that differs; return the names repaired. Raises
    ``RemoteCodeError`` when a buffer cannot be checked (no skeleton, a buffer missing from it, a
    shape mismatch, a non-finite fresh value) or is not reproducible (two fresh builds disagree)."""
    import torch
    import transformers

    loaded = _non_persistent_buffers(model)
    if not loaded:
        return []
    fresh = _fresh_buffers(model, checkpoint)
    wrong = []
    for name, (module, local) in loaded.items():
        have, want = module._buffers[local], fresh.get(name)
        if want is None:
            raise _refusal(checkpoint, f"buffer {name} is not built by the model's __init__ and cannot be checked")
        if want.shape != have.shape:
            raise _refusal(
                checkpoint, f"buffer {name} has shape {tuple(have.shape)}, its own code builds {tuple(want.shape)}"
            )
        if want.is_floating_point() and not bool(torch.isfinite(want).all()):
            raise _refusal(checkpoint, f"buffer {name} is not finite even when its own code computes it")
        if not _agrees(have, want):
            wrong.append(name)
    if not wrong:
        return []
    again = _fresh_buffers(model, checkpoint)
    unstable = [name for name in wrong if not _agrees(fresh[name], again[name])]
    if unstable:
        raise _refusal(
            checkpoint,
            f"non-persistent buffers {', '.join(unstable)} differ from what the model's own code computes, "
            "and that code does not reproduce them (two builds disagree), so they cannot be verified",
        )
    with torch.no_grad():
        for name in wrong:
            module, local = loaded[name]
            module._buffers[local].copy_(fresh[name].to(module._buffers[local].device, module._buffers[local].dtype))
    log.info(
        "%s: transformers %s left %d non-persistent buffers wrong (%s); recomputed them with the checkpoint's own code",
        checkpoint,
        transformers.__version__,
        len(wrong),
        ", ".join(sorted({name.rsplit(".", 1)[-1] for name in wrong})),
    )
    return wrong


def _defines_own_generation_inputs(cls: type) -> bool:
    return any(
        "prepare_inputs_for_generation" in vars(c) for c in cls.__mro__ if c.__module__.startswith(REMOTE_MODULE_PREFIX)
    )


class _LegacyGenerationInputs:
    """What ``generate`` gave remote code before 4.50, which ``GenerationMixin`` alone no longer does
    (measured on InternLM2's code, tests/test_remote_code.py):

    * no ``Cache`` object unless the class declares ``_supports_cache_class`` (4.49's rule): 4.57 and
      5.x start every model on an empty ``DynamicCache``, and InternLM2's
      ``past_key_values[0][0].shape[2]`` fails on it; the model's own tuples are passed back instead;
    * the cache under the keyword the remote code reads (5.x hands it over as ``cache``);
    * no ``position_ids`` from ``generate`` (5.x keeps full-length ones in the model kwargs, which
      InternLM2 would not slice): the remote code derives them from the attention mask itself.
    """

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return bool(getattr(cls, "_supports_cache_class", False))

    def prepare_inputs_for_generation(self, input_ids, cache=None, inputs_embeds=None, **kwargs):
        if cache is not None:
            kwargs["past_key_values"] = cache
        kwargs.pop("position_ids", None)
        return super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)


def _with_generation_mixin(cls: type) -> type:
    """``cls`` with ``GenerationMixin`` after it (where ``PreTrainedModel`` had it before 4.50) and the
    legacy generation inputs before it; same name and module, so nothing else sees a change."""
    from transformers import GenerationMixin

    if cls not in _MIXED:
        _MIXED[cls] = type(
            cls.__name__,
            (_LegacyGenerationInputs, cls, GenerationMixin),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__},
        )
    return _MIXED[cls]


def _probe_generate(lm, checkpoint: str) -> None:
    """Greedy ``generate`` of ``PROBE_TOKENS`` tokens from ``inputs_embeds`` with the KV cache, as
    InternVLChatModel.generate calls it, must give the logits of one full forward without a cache over
    the same tokens (which also makes each greedy token the argmax of the cache-less logits)."""
    import torch

    embedding = lm.get_input_embeddings()
    vocab, device = embedding.num_embeddings, embedding.weight.device
    ids = torch.linspace(1, vocab - 1, 6, device=device).long()[None, 1:]
    embeds = embedding(ids)
    with torch.no_grad():
        try:
            out = lm.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones_like(ids),
                use_cache=True,
                do_sample=False,
                max_new_tokens=PROBE_TOKENS,
                min_new_tokens=PROBE_TOKENS,  # an early end-of-sequence must not shorten the check
                output_logits=True,
                return_dict_in_generate=True,
            )
            steps = torch.stack([step[0].float() for step in out.logits])
            tokens = out.sequences[0, -len(steps) :].to(device)
            full = torch.cat([embeds, embedding(tokens[None, :-1])], dim=1)
            mask = torch.ones(full.shape[:2], dtype=torch.long, device=device)
            reference = lm(inputs_embeds=full, attention_mask=mask, use_cache=False).logits[0, ids.shape[1] - 1 :]
        except Exception as exc:
            raise _refusal(
                checkpoint,
                f"{type(lm).__name__} cannot generate with GenerationMixin added ({type(exc).__name__}: {exc})",
            ) from exc
    tol = 1e-3 if _model_dtype(lm) == torch.float32 else 5e-2
    reference = reference.float().to(steps.device)
    error = float((steps - reference).abs().max()) / max(1.0, float(reference.abs().max()))
    if len(steps) != PROBE_TOKENS or error > tol:
        raise _refusal(
            checkpoint,
            f"{type(lm).__name__}.generate with GenerationMixin added disagrees with its own forward pass "
            f"({len(steps)} tokens, relative logit error {error:.3g})",
        )


def ensure_generate(model, checkpoint: str) -> list[str]:
    """Give every remote-code submodule that defines ``prepare_inputs_for_generation`` but has no
    ``generate`` the ``GenerationMixin`` with pre-4.50 generation inputs (on that instance only), then
    probe it; return the names of the modules changed. Raises ``RemoteCodeError`` (and leaves the
    module as it was) when the probe fails."""
    from transformers import GenerationConfig

    added = []
    for name, module in model.named_modules():
        cls = type(module)
        if not is_remote(module) or hasattr(module, "generate") or not _defines_own_generation_inputs(cls):
            continue
        module.__class__ = _with_generation_mixin(cls)
        if getattr(module, "generation_config", None) is None:
            module.generation_config = GenerationConfig.from_model_config(module.config)
        try:
            _probe_generate(module, checkpoint)
        except RemoteCodeError:
            module.__class__ = cls
            raise
        added.append(name or cls.__name__)
    if added:
        log.info("%s: added transformers' GenerationMixin to %s (probe passed)", checkpoint, ", ".join(added))
    return added


def prepare_remote_model(model, checkpoint: str) -> dict:
    """``repair_buffers`` then ``ensure_generate``; what each changed."""
    return {"repaired_buffers": repair_buffers(model, checkpoint), "generate_added": ensure_generate(model, checkpoint)}


def prepare_policy(base) -> None:
    """Prepare every remote-code torch model a built VLMEvalKit wrapper holds (e.g. ``InternVLChat``'s
    ``model``), named by its checkpoint path (``config._name_or_path``, else the wrapper's ``model_path``)."""
    for attr, value in list(vars(base).items()):
        if is_remote(value) and hasattr(value, "named_modules"):
            checkpoint = getattr(value.config, "_name_or_path", "") or getattr(base, "model_path", None) or attr
            prepare_remote_model(value, checkpoint)
