"""A PRM conversation as turns, and its renderings: a prompt string in a chat template with the
backend's image marker, HF chat messages, OpenAI chat messages. What the turns say is the format's
(``prm.formats``); every backend renders the same turns its own way, never rebuilding the wording.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

#: InternVL's image placeholder in a prompt; its chat code expands it to <img> + context tokens + </img>.
INTERNVL_IMAGE = "<image>"


class _Image:
    """The place of one image in a turn. Rendered with the line break that follows it in InternVL
    (``<image>\\n``): chat templates and LMDeploy's InternVL preprocessor add that break themselves."""

    def __repr__(self) -> str:
        return "IMAGE"


IMAGE = _Image()


@dataclass(frozen=True)
class Turn:
    role: str
    parts: tuple  # str or IMAGE, in order


@dataclass(frozen=True)
class ChatTemplate:
    """How the PRM's chat template frames a turn, for backends that render the prompt as text.

    The defaults are InternVL's ``internvl2_5`` conversation template, the one VisualPRM-8B uses
    (InternVL ``conversation.py``: system ``<|im_start|>system\\n{system_message}``, roles
    ``<|im_start|>user\\n`` / ``<|im_start|>assistant\\n``, MPT style, separator ``<|im_end|>\\n``),
    i.e. ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``.
    """

    turn_start: str = "<|im_start|>"
    role_end: str = "\n"
    turn_end: str = "<|im_end|>\n"

    def header(self, role: str) -> str:
        return f"{self.turn_start}{role}{self.role_end}"

    def render(self, turns: Sequence[Turn], image: str) -> str:
        """The prompt text; ``image`` is what stands for one image (e.g. ``"<image>\\n"``). An empty turn is
        its header alone, as InternVL's MPT-style ``get_prompt`` writes it (``if message: ... else: ret += role``)."""
        return "".join(
            f"{self.header(t.role)}{text}{self.turn_end}" if (text := _text(t, image)) else self.header(t.role)
            for t in turns
        )


#: InternVL conversation-template names (``config.template`` of a remote-code checkpoint) we can render.
TEMPLATES = {"internvl2_5": ChatTemplate()}


def chat_template(spec: str | dict | ChatTemplate | None) -> ChatTemplate:
    """A template from a name in ``TEMPLATES``, a dict of ``ChatTemplate`` fields, or None (internvl2_5)."""
    if spec is None:
        return TEMPLATES["internvl2_5"]
    if isinstance(spec, ChatTemplate):
        return spec
    if isinstance(spec, str):
        if spec not in TEMPLATES:
            raise ValueError(
                f"unknown PRM chat template {spec!r}; use one of {sorted(TEMPLATES)} or a dict "
                f"with the fields {[f.name for f in fields(ChatTemplate)]}"
            )
        return TEMPLATES[spec]
    unknown = set(spec) - {f.name for f in fields(ChatTemplate)}
    if unknown:
        raise ValueError(
            f"unknown chat template fields {sorted(unknown)}; expected {[f.name for f in fields(ChatTemplate)]}"
        )
    return ChatTemplate(**spec)


def image_parts(n_images: int) -> tuple:
    """One placeholder per image, in order; labelled ``Image-k: `` when there are several."""
    if n_images <= 1:
        return (IMAGE,) * n_images
    return tuple(p for k in range(n_images) for p in (f"Image-{k + 1}: ", IMAGE))


def build_messages(turns: Sequence[Turn]) -> list[dict]:
    """HF chat messages (content parts) for ``processor.apply_chat_template``."""
    return [
        {"role": t.role, "content": [{"type": "image"} if p is IMAGE else {"type": "text", "text": p} for p in t.parts]}
        for t in turns
    ]


def chat_messages(turns: Sequence[Turn], image_urls: Sequence[str]) -> list[dict]:
    """OpenAI chat messages: a turn with images becomes text and image_url parts in their order
    (LMDeploy's InternVL preprocessor renders each image part as ``<img>...</img>\\n`` in place)."""
    urls = iter(image_urls)
    out = []
    for t in turns:
        if any(p is IMAGE for p in t.parts):
            content = [
                {"type": "image_url", "image_url": {"url": next(urls)}} if p is IMAGE else {"type": "text", "text": p}
                for p in t.parts
            ]
        else:
            content = "".join(t.parts)
        out.append({"role": t.role, "content": content})
    return out


def _text(turn: Turn, image: str) -> str:
    return "".join(image if p is IMAGE else p for p in turn.parts)
