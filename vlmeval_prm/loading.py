"""Load an image-text-to-text model and its processor with transformers (local path or hub id).

``tiny:policy`` / ``tiny:prm`` name the locally built tiny models (see ``vlmeval_prm.tiny``).
"""

from __future__ import annotations


def resolve_path(path: str) -> str:
    if path.startswith("tiny:"):
        from vlmeval_prm.tiny import tiny_model_path

        return tiny_model_path(path.split(":", 1)[1])
    return path


def load_model_and_processor(path: str, device: str | None = None, dtype: str | None = None,
                             trust_remote_code: bool = False, attn_implementation: str | None = None):
    """(model, processor) in eval mode. float32 on CPU, bfloat16 on GPU unless ``dtype`` says otherwise."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = resolve_path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch_dtype, trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation)
    return model.to(device).eval(), processor


def load_images(paths) -> list:
    """PIL images in RGB; raises with the path when one cannot be opened."""
    from PIL import Image

    images = []
    for p in paths:
        try:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        except Exception as exc:
            raise ValueError(f"image could not be opened: {p}: {exc}") from exc
    return images


def message_parts(message) -> tuple[str, list[str]]:
    """(text, image paths) of a VLMEvalKit message (list of {"type", "value"} dicts)."""
    texts = [m["value"] for m in message if m["type"] == "text"]
    images = [m["value"] for m in message if m["type"] == "image"]
    return "\n".join(texts), images
