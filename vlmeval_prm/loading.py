"""Load models with transformers (local path or hub id): HF-native image-text-to-text models and
remote-code InternVL checkpoints (``InternVLChatModel``, e.g. VisualPRM-8B), and their images.

``tiny:policy`` / ``tiny:prm`` name the locally built tiny models (see ``vlmeval_prm.tiny``).
"""

from __future__ import annotations

#: InternVL's tile count limit on VisualPRM-8B's model card (dynamic tiling, 448 px tiles).
INTERNVL_MAX_TILES = 12


def resolve_path(path: str) -> str:
    if path.startswith("tiny:"):
        from vlmeval_prm.tiny import tiny_model_path

        return tiny_model_path(path.split(":", 1)[1])
    return path


def checkpoint_config(path: str) -> dict:
    """The checkpoint's ``config.json`` as a dict, read without running any of its code."""
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(resolve_path(path))
    return config


def uses_remote_code(config: dict) -> bool:
    """True when the model class comes from the checkpoint's own files (``auto_map``), as for
    InternVL's ``InternVLChatModel``, rather than from transformers."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    auto_map = config.get("auto_map") or {}
    return (
        bool(auto_map)
        and ("AutoModel" in auto_map or "AutoModelForCausalLM" in auto_map)
        and config.get("model_type") not in CONFIG_MAPPING
    )


def _device_dtype(device: str | None, dtype: str | None):
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)


def load_model_and_processor(
    path: str,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    """(model, processor) in eval mode. float32 on CPU, bfloat16 on GPU unless ``dtype`` says otherwise."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = resolve_path(path)
    device, torch_dtype = _device_dtype(device, dtype)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch_dtype, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation
    )
    return model.to(device).eval(), processor


def load_remote_code_model(path: str, device: str | None = None, dtype: str | None = None):
    """(model, tokenizer) of a remote-code checkpoint, loaded as InternVL's own instructions do:
    ``AutoModel`` and a slow ``AutoTokenizer``, both with ``trust_remote_code=True``. Non-persistent
    buffers that transformers left wrong (InternLM2's RoPE on 5.x) are recomputed by the checkpoint's
    own code, or the checkpoint is refused (``remote_code.RemoteCodeError``); what was repaired is kept
    as ``model.remote_code_report`` (for ``vlmeval-prm check-prm``). Scoring needs only the forward
    pass, so ``generate`` is not required here."""
    from transformers import AutoModel, AutoTokenizer

    from vlmeval_prm.remote_code import repair_buffers

    path = resolve_path(path)
    device, torch_dtype = _device_dtype(device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=False)
    model = AutoModel.from_pretrained(path, dtype=torch_dtype, trust_remote_code=True, low_cpu_mem_usage=True)
    model = model.to(device).eval()
    model.remote_code_report = {"repaired_buffers": repair_buffers(model, path)}
    return model, tokenizer


def package_classes(
    path: str, fmt: str, code: tuple[str, str] | None, module: str | None = None
) -> tuple[type, type] | None:
    """The model and processor classes of format ``fmt`` whose code is a package of its own (``code``, its
    ``PRMFormat.model_code``; ``module`` replaces the package's module, e.g. "models.ursa_model"), imported;
    None for a format without one. ValueError saying how to make the package importable when it is not."""
    import importlib

    if code is None:
        if module is not None:
            raise ValueError(f"the code option names a model package; the {fmt} format loads none")
        return None
    classes = []
    for entry in code:
        default, _, name = entry.partition(":")
        try:
            classes.append(getattr(importlib.import_module(module or default), name))
        except (ImportError, AttributeError) as exc:
            raise ValueError(
                f"the {fmt} format loads {path} with its own package ({module or default}), which does not "
                f"import: {exc}. Put the directory holding it on PYTHONPATH, or name it with the option "
                '{"code": "<module>"}'
            ) from None
    return classes[0], classes[1]


def load_package_model(path: str, classes: tuple[type, type], device: str | None, dtype: str | None):
    """(model, processor) with ``classes`` (``package_classes``), both loaded with ``from_pretrained`` as
    that package's own scripts load them."""
    model_cls, processor_cls = classes
    path = resolve_path(path)
    device, torch_dtype = _device_dtype(device, dtype)
    model = model_cls.from_pretrained(path, dtype=torch_dtype).to(device).eval()
    return model, processor_cls.from_pretrained(path)


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


def internvl_tiles(paths, image_size: int, max_num: int = INTERNVL_MAX_TILES) -> tuple[list, list[int]]:
    """Per image, its InternVL tiles as one tensor (dynamic tiling plus a thumbnail), with VLMEvalKit's
    own InternVL utilities; and the tile counts. Raises with the path when an image cannot be read."""
    from vlmeval.vlm.internvl.utils import load_image

    tiles = []
    for p in paths:
        try:
            tiles.append(load_image(p, input_size=image_size, max_num=max_num))
        except Exception as exc:
            raise ValueError(f"image could not be opened: {p}: {exc}") from exc
    return tiles, [t.shape[0] for t in tiles]


def message_parts(message) -> tuple[str, list[str]]:
    """(text, image paths) of a VLMEvalKit message (list of {"type", "value"} dicts)."""
    texts = [m["value"] for m in message if m["type"] == "text"]
    images = [m["value"] for m in message if m["type"] == "image"]
    return "\n".join(texts), images
