"""A VLMEvalKit model built from a name or a ``--config`` entry: a Best-of-N base model, a critic's judge."""

from __future__ import annotations

from vlmeval_prm.logs import redact_secrets


def build_base(model, **kwargs):
    """A base model from a ``supported_VLM`` name or a ``--config``-style dict with ``class``. Its credentials
    (config or environment) are masked in every log line from here on (API classes log their key)."""
    from vlmeval.config import supported_VLM

    redact_secrets(model if isinstance(model, dict) else None)

    if isinstance(model, dict):
        import vlmeval.api
        import vlmeval.vlm

        cfg = dict(model)
        cls_name = cfg.pop("class")
        for mod in (vlmeval.vlm, vlmeval.api):
            if hasattr(mod, cls_name):
                return getattr(mod, cls_name)(**cfg, **kwargs)
        raise ValueError(f"base model class {cls_name!r} is not in vlmeval.vlm or vlmeval.api")
    if model not in supported_VLM:
        raise KeyError(f"base model {model!r} is not in VLMEvalKit's supported_VLM")
    return supported_VLM[model](**kwargs)
