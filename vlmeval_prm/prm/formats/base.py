"""The PRM format interface: the conversation a PRM is shown, its label tokens and its identity."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from vlmeval_prm.prm.conversation import IMAGE, INTERNVL_IMAGE, ChatTemplate, Turn, build_messages
from vlmeval_prm.steps import split_steps

#: An option value that keeps the format's own setting (e.g. its system prompt).
FORMAT_DEFAULT = "format-default"


def single_token(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"PRM tokenizer splits {text!r} into {len(ids)} tokens; a one-token label is required")
    return ids[0]


@dataclass(frozen=True)
class PRMFormat:
    """What a PRM is shown (``conversation``) and where its score is read: the probability of
    ``good_token`` against ``bad_token`` (a two-way softmax) at each assistant label. ``system_prompt=None``
    sends no system turn; ``template`` frames turns where a backend renders text itself (a served
    /generate prompt, a remote-code checkpoint)."""

    name: ClassVar[str]
    #: The backends that can score with this format.
    backends: ClassVar[tuple[str, ...]] = ("transformers", "lmdeploy")
    #: Keyword arguments for an HF-native PRM's processor call (e.g. its pixel bounds).
    processor_kwargs: ClassVar[dict] = {}
    #: The token after each step at whose position its score is read (MM-PRM's ``<prm>``); None: the
    #: position before each assistant label, whose logits predict it (VisualPRM).
    marker: ClassVar[str | None] = None
    #: InternVL tiles per image for remote-code checkpoints (None: the backend's default).
    max_tiles: ClassVar[int | None] = None
    #: How a score comes out of the logits at a read position: None, a two-way softmax over the label
    #: tokens (P(good)); "softmax", a two-class classification head's softmax (P of class 1); "sigmoid",
    #: a one-output head's sigmoid.
    head: ClassVar[str | None] = None
    #: A text PRM: shown no images (loaded with ``AutoModel`` and its tokenizer's chat template).
    text_only: ClassVar[bool] = False
    #: What stands for one image where the chat template is given plain-text contents (URSA's ``<|image|>``).
    image_text: ClassVar[str] = ""
    #: A model whose code is a Python package of its own, neither in transformers nor in the checkpoint:
    #: ("module:ModelClass", "module:ProcessorClass"), both loaded with ``from_pretrained``.
    model_code: ClassVar[tuple[str, str] | None] = None
    #: ``config.json`` ``model_type`` or ``architectures`` values that name this format unambiguously.
    detects: ClassVar[tuple[str, ...]] = ()

    system_prompt: str | None = None
    good_token: str = "+"
    bad_token: str = "-"
    template: ChatTemplate = field(default_factory=ChatTemplate)

    def split(self, response: str | None, max_steps: int) -> list[str]:
        """The steps this PRM scores in a response: VisualPRM's blank-line rule by default (``steps.py``)."""
        return split_steps(response, max_steps)

    def conversation(self, question: str, steps: Sequence[str], n_images: int) -> list[Turn]:
        """The turns: per step, the turns up to and including its assistant label."""
        raise NotImplementedError

    def render(self, question: str, steps: Sequence[str], n_images: int, image: str = INTERNVL_IMAGE + "\n") -> str:
        """The whole conversation as text in ``template``; ``image`` stands for one image (InternVL's
        ``<image>\\n`` by default)."""
        return self.template.render(self.conversation(question, steps, n_images), image)

    def messages(self, question: str, steps: Sequence[str], n_images: int) -> list[dict]:
        """HF chat messages (content parts) for a processor's own chat template."""
        return build_messages(self.conversation(question, steps, n_images))

    def text_messages(self, question: str, steps: Sequence[str], n_images: int = 0) -> list[dict]:
        """Chat messages with plain-text contents, each image as ``image_text`` (a text PRM: none)."""
        return [
            {"role": t.role, "content": "".join(self.image_text if p is IMAGE else p for p in t.parts)}
            for t in self.conversation(question, steps, n_images)
        ]

    def prompt_head(self, question: str, n_images: int, image: str) -> str:
        """The text every candidate's prompt starts with: all that comes before the first step."""
        return os.path.commonprefix([self.render(question, [mark], n_images, image) for mark in ("\x00", "\x01")])

    def label_ids(self, tokenizer) -> tuple[int, int] | None:
        """The token ids of the good and the bad label (one token each) in the PRM's tokenizer; None for a
        format read from a head."""
        if self.head:
            return None
        return single_token(tokenizer, self.good_token), single_token(tokenizer, self.bad_token)

    def probability(self, logits, labels: tuple[int, int] | None):
        """Step scores from the logits at the read positions ([steps, vocab or classes])."""
        import torch

        if self.head == "softmax":
            return torch.softmax(logits.float(), dim=-1)[:, 1]
        if self.head == "sigmoid":
            return torch.sigmoid(logits.float()[:, 0])
        return torch.softmax(logits[:, list(labels)].float(), dim=-1)[:, 0]

    def marker_id(self, tokenizer) -> int:
        """The token id of ``marker``; ValueError if the tokenizer has no such token."""
        found = tokenizer.convert_tokens_to_ids(self.marker)
        if found is None or found == tokenizer.unk_token_id:
            raise ValueError(f"the PRM tokenizer has no {self.marker!r} token, which the {self.name} format scores at")
        return found

    def load_image(self, path: str):
        """One image as the PRM's own code opens it (PIL, RGB); ValueError naming the path if it cannot."""
        from vlmeval_prm.loading import load_images

        return load_images([path])[0]

    def identity(self) -> dict:
        """What scores depend on, for the score store: the format's name and every field."""
        return {"name": self.name, **asdict(self)}
