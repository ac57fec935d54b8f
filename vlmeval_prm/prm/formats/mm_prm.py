"""MM-PRM (ModalMinds, arXiv 2505.13427; InternVL2.5-8B): the prompt its scoring code builds.

Read from ModalMinds/MM-PRM at b914fd66c8efb3d6667610fba1f8fd1e55cde095
(``internvl/model/internvl_chat/modeling_internvl_chat.py``, ``InternVLChatModel.batch_prm``;
``eval/prm/evaluate_k12_prm.py``; ``internvl/conversation.py``):

- the ``internvl2_5`` template with its DEFAULT system message (``batch_prm`` does not set
  ``config.system_message``), an EMPTY user turn (MPT ``get_prompt`` writes its header alone) and the whole
  prompt in the assistant turn: ``<image>\\nQuestion: {question}\\nProcess: {s1}<prm>{s2}<prm>...{sN}<prm>``;
- ``<prm>`` an added special token, left in place; a step's score is the softmax over the logits of
  ``Yes`` and ``No`` (``convert_tokens_to_ids``, not ``encode``) AT each ``<prm>`` position (no shift), P(Yes);
- images tiled by InternVL's ``dynamic_preprocess`` with at most 6 tiles (its eval scripts' ``--max-num``).

Its code expands one ``<image>``; with several images this format labels one placeholder per image in order
(``Image-k: <image>``), as InternVL's chat does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlmeval_prm.prm.conversation import Turn, image_parts
from vlmeval_prm.prm.formats.base import PRMFormat

# Verbatim: the internvl2_5 template's system_message in ModalMinds/MM-PRM internvl/conversation.py (InternVL's).
INTERNVL_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
PRM_TOKEN = "<prm>"


@dataclass(frozen=True)
class MMPRMFormat(PRMFormat):
    name = "mm-prm"
    #: The remote-code InternVL path renders it; LMDeploy's chat template would close the empty user turn.
    backends = ("transformers",)
    marker = PRM_TOKEN
    max_tiles = 6
    system_prompt: str | None = INTERNVL_SYSTEM_MESSAGE
    good_token: str = "Yes"
    bad_token: str = "No"

    def conversation(self, question: str, steps: Sequence[str], n_images: int) -> list[Turn]:
        if not steps:
            raise ValueError("a candidate with no steps cannot be scored")
        process = "".join(f"{step}{PRM_TOKEN}" for step in steps)
        turns = [Turn("system", (self.system_prompt,))] if self.system_prompt else []
        return [
            *turns,
            Turn("user", ()),
            Turn("assistant", (*image_parts(n_images), f"Question: {question}\nProcess: {process}")),
        ]

    def label_ids(self, tokenizer) -> tuple[int, int]:
        """``tokenizer.convert_tokens_to_ids(['Yes', 'No'])``, as ``batch_prm`` reads them."""
        ids = tokenizer.convert_tokens_to_ids([self.good_token, self.bad_token])
        if any(i is None or i == tokenizer.unk_token_id for i in ids) or ids[0] == ids[1]:
            raise ValueError(f"the PRM tokenizer has no tokens {self.good_token!r} and {self.bad_token!r}")
        return ids[0], ids[1]
