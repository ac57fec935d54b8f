"""The demo's trained policy as a VLMEvalKit model: ``TransformersChat`` on the cached checkpoint,
built first when the cache has none (``vlmeval_prm.demo.build``)."""

from __future__ import annotations

from vlmeval_prm.demo.build import ensure_built
from vlmeval_prm.demo.paths import policy_path
from vlmeval_prm.policy.transformers_chat import TransformersChat

#: Room for the four steps (about 35 tokens) and a rambling sample.
MAX_NEW_TOKENS = 64


class ShapesPolicy(TransformersChat):
    def __init__(self, max_new_tokens: int = MAX_NEW_TOKENS, **kwargs):
        ensure_built()
        super().__init__(model_path=policy_path(), max_new_tokens=max_new_tokens, **kwargs)
