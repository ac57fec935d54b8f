"""Run VLMEvalKit's CUDA-only local wrappers on a CPU-only machine, for tests (put this folder first on
PYTHONPATH and PATH of a ``python -m vlmeval.run`` subprocess).

What is faked is the GPU, nothing else: device placement to "cuda" (``.cuda()``, ``.to("cuda")``) stays
on the CPU, the flash-attention kernel (a CUDA extension) becomes PyTorch's sdpa attention, and the
``nvidia-smi`` next to this file reports one free GPU to VLMEvalKit's ``get_gpu_memory`` check. Model
code, weights, processors, prompts, decoding and VLMEvalKit itself run unchanged.
"""

import torch


def _cpu(device):
    return "cpu" if isinstance(device, (str, torch.device)) and str(device).startswith("cuda") else device


def _patch_to(cls):
    original = cls.to

    def to(self, *args, **kwargs):
        args = tuple(_cpu(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return original(self, *args, **kwargs)

    cls.to = to


_patch_to(torch.Tensor)
_patch_to(torch.nn.Module)
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self


def _cpu_kwargs(kwargs: dict) -> dict:
    if kwargs.get("attn_implementation") == "flash_attention_2":
        kwargs["attn_implementation"] = "sdpa"
    kwargs.pop("use_flash_attention_2", None)
    if kwargs.get("device_map") in ("cuda", "cuda:0"):
        kwargs["device_map"] = "cpu"
    return kwargs


def _patch_from_pretrained(owner):
    original = owner.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        return original(cls, *args, **_cpu_kwargs(kwargs))

    owner.from_pretrained = classmethod(from_pretrained)


def _patch_transformers():
    from transformers import modeling_utils
    from transformers.models.auto import auto_factory

    _patch_from_pretrained(modeling_utils.PreTrainedModel)
    _patch_from_pretrained(auto_factory._BaseAutoModelClass)


_patch_transformers()
