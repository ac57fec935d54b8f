"""A tiny stand-in for URSA-RM-8B and URSA's model package, neither of which can be downloaded here.

URSA-RM-8B loads with URSA's own package, not with transformers' Auto classes nor with remote code in the
checkpoint: ``UrsaForTokenClassification.from_pretrained`` and ``UrsaProcessor.from_pretrained`` from
``models/ursa_model`` of URSA-MATH/URSA-MATH (read at c4e30ff78802b90054a74ae74f3c2e9fac12aa4a). This writes a
package of the same name and shape into a folder the test puts on ``sys.path``/``PYTHONPATH``, and a
checkpoint it loads. What it reproduces, from ``modeling_ursa.py``, ``configuration_ursa.py``,
``processing_ursa.py`` and ``image_processing_vlm.py``:

- ``UrsaConfig`` (``model_type`` "ursa") with ``vision_config``/``aligner_config`` dicts and a ``text_config``
  built through ``CONFIG_MAPPING`` (a Qwen2 decoder), ``image_token_index`` set by the checkpoint;
- ``UrsaForTokenClassification``: the vision tower and aligner, ``AutoModelForCausalLM.from_config`` of the text
  config, ``Dropout(0.1)`` and ``score = Linear(hidden, 1)`` on ``hidden_states[-1]`` of the decoder (its
  ``lm_head`` unused), xavier ``_init_weights``; each image token in ``input_ids`` replaced by all of its image's
  features (LLaVA's merge), so every later position moves by features - 1, plain 1-D positions;
- ``UrsaProcessor`` (``ProcessorMixin`` over an ``AutoImageProcessor`` and an ``AutoTokenizer``, called as
  ``processor(prompt, images, return_tensors=...)``) and ``VLMImageProcessor`` (registered with
  ``AutoImageProcessor``: longest side resized to ``image_size``, padded square on the mean colour, rescaled,
  normalised);
- a tokenizer holding ``<|image|>`` and in which `` и`` is one token (one BPE piece in Qwen2's real
  vocabulary, an added token here), and a ChatML chat template over plain-text contents.

Left out: the real hybrid SAM+SigLIP tower (576 features per image; here one strided convolution giving
``FEATURES`` per image: scoring depends only on how many features replace the image token), the real
weights (random, seeded) and vocabulary (bytes, no merges).
"""

from __future__ import annotations

import sys
from pathlib import Path

from standins.internlm2_remote import write_tokenizer

#: Image features per image in the stand-in (URSA's tower: 576).
FEATURES = 16
IMAGE_SIZE = 32
#: URSA's tokens after the stand-in tokenizer's own.
EXTRA_TOKENS = (("<|image|>", True), (" и", False))
#: Qwen2.5 ChatML over plain-text contents, with a generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

FILES = {
    "__init__.py": """
from .configuration_ursa import UrsaConfig
from .image_processing_vlm import VLMImageProcessor, VLMImageProcessorConfig
from .modeling_ursa import UrsaForTokenClassification
from .processing_ursa import UrsaProcessor
""",
    "configuration_ursa.py": """
from transformers import CONFIG_MAPPING, PretrainedConfig


class UrsaConfig(PretrainedConfig):
    model_type = "ursa"
    is_composition = False

    def __init__(self, vision_config=None, aligner_config=None, text_config=None, ignore_index=-100,
                 image_token_index=32000, **kwargs):
        self.ignore_index = ignore_index
        self.image_token_index = image_token_index
        self.vision_config = vision_config or {"cls": "HybridVisionTower", "params": {}}
        self.aligner_config = aligner_config or {"cls": "MlpProjector", "params": {}}
        if isinstance(text_config, dict):
            text_config = CONFIG_MAPPING[text_config.get("model_type", "llama")](**text_config)
        elif text_config is None:
            text_config = CONFIG_MAPPING["llama"]()
        self.text_config = text_config
        super().__init__(**kwargs)
""",
    "modeling_ursa.py": """
import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from .configuration_ursa import UrsaConfig


class HybridVisionTower(nn.Module):
    # stand-in: one strided convolution, (size / patch)^2 features per image
    def __init__(self, image_size=32, patch=8, width=24):
        super().__init__()
        self.patchify = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, pixel_values):
        return self.patchify(pixel_values).flatten(2).transpose(1, 2)


class MlpProjector(nn.Module):
    def __init__(self, params):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(params["input_dim"], params["n_embed"]), nn.GELU(),
                                    nn.Linear(params["n_embed"], params["n_embed"]))

    def forward(self, x):
        return self.layers(x)


class UrsaPreTrainedModel(PreTrainedModel):
    config_class = UrsaConfig
    base_model_prefix = "model"


class UrsaForTokenClassification(UrsaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.vision_model = HybridVisionTower(**config.vision_config["params"])
        self.aligner = MlpProjector(config.aligner_config["params"])
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.dropout = nn.Dropout(0.1)
        self.score = nn.Linear(self.language_model.config.hidden_size, 1)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def merge(self, features, embeds, input_ids, attention_mask):
        # every image token becomes its image's features; text keeps its order; positions count from 0
        rows, masks = [], []
        images = iter(features)
        for ids, row, mask in zip(input_ids, embeds, attention_mask):
            pieces, mask_pieces = [], []
            for i, token in enumerate(ids.tolist()):
                if token == self.config.image_token_index:
                    image = next(images)
                    pieces.append(image)
                    mask_pieces.append(mask.new_ones(image.shape[0]))
                else:
                    pieces.append(row[i : i + 1])
                    mask_pieces.append(mask[i : i + 1])
            rows.append(torch.cat(pieces))
            masks.append(torch.cat(mask_pieces))
        if len({r.shape[0] for r in rows}) != 1:
            raise ValueError("rows with different numbers of image tokens")
        merged_mask = torch.stack(masks)
        positions = (merged_mask.cumsum(-1) - 1).masked_fill(merged_mask == 0, 1)
        return torch.stack(rows), merged_mask, positions

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, **kwargs):
        embeds = self.get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = None
        if pixel_values is not None and input_ids.shape[1] != 1:
            features = self.aligner(self.vision_model(pixel_values))
            embeds, attention_mask, positions = self.merge(features, embeds.to(features.dtype), input_ids,
                                                           attention_mask)
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions,
                                  output_hidden_states=True)
        return ModelOutput(logits=self.score(self.dropout(out.hidden_states[-1])), hidden_states=out.hidden_states)
""",
    "processing_ursa.py": """
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


class UrsaProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    valid_kwargs = ["chat_template"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(self, text=None, images=None, padding=False, truncation=None, max_length=None, return_tensors=None):
        image_inputs = {}
        if images is not None:
            image_inputs = self.image_processor(images, return_tensors=return_tensors)
        text_inputs = self.tokenizer(text, return_tensors=return_tensors, padding=padding, truncation=truncation,
                                     max_length=max_length)
        return BatchFeature(data={**text_inputs, **image_inputs})
""",
    "image_processing_vlm.py": """
import numpy as np
from PIL import Image
from transformers import AutoImageProcessor, PretrainedConfig
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


class VLMImageProcessorConfig(PretrainedConfig):
    model_type = "deepseek_vlm"


class VLMImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values"]

    def __init__(self, image_size, min_size=14, image_mean=(0.48145466, 0.4578275, 0.40821073),
                 image_std=(0.26862954, 0.26130258, 0.27577711), rescale_factor=1 / 255, do_normalize=True, **kwargs):
        super().__init__(**kwargs)
        self.image_size, self.min_size = image_size, min_size
        self.image_mean, self.image_std = image_mean, image_std
        self.rescale_factor, self.do_normalize = rescale_factor, do_normalize
        self.background_color = tuple(int(x * 255) for x in image_mean)

    def square(self, image):
        w, h = image.size
        scale = self.image_size / max(w, h)
        image = image.resize((max(int(w * scale), self.min_size), max(int(h * scale), self.min_size)),
                             Image.BICUBIC)
        side = max(image.size)
        canvas = Image.new(image.mode, (side, side), self.background_color)
        canvas.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
        return np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1)

    def preprocess(self, images, return_tensors="pt", **kwargs):
        arrays = [self.square(image) * self.rescale_factor for image in images]
        if self.do_normalize:
            mean = np.array(self.image_mean, dtype=np.float32)[:, None, None]
            std = np.array(self.image_std, dtype=np.float32)[:, None, None]
            arrays = [(a - mean) / std for a in arrays]
        return BatchFeature(data={"pixel_values": np.stack(arrays)}, tensor_type=return_tensors)


AutoImageProcessor.register(VLMImageProcessorConfig, VLMImageProcessor)
""",
}


def write_package(root: str | Path) -> str:
    """Write ``ursa_model/`` into ``root`` (the folder to put on ``sys.path``); return ``root``."""
    package = Path(root) / "ursa_model"
    package.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (package / name).write_text(text.lstrip())
    return str(root)


def write_checkpoint(out: str | Path, package_root: str | Path, seed: int = 11) -> str:
    """A tiny URSA-RM checkpoint in ``out``, built with the package under ``package_root``."""
    import torch

    if str(package_root) not in sys.path:
        sys.path.insert(0, str(package_root))
    from transformers import AutoTokenizer
    from ursa_model import UrsaConfig, UrsaForTokenClassification, UrsaProcessor, VLMImageProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(out, EXTRA_TOKENS)
    hidden = 32
    config = UrsaConfig(
        vision_config={"cls": "HybridVisionTower", "params": {"image_size": IMAGE_SIZE, "patch": 8, "width": 24}},
        aligner_config={"cls": "MlpProjector", "params": {"input_dim": 24, "n_embed": hidden}},
        text_config={
            "model_type": "qwen2",
            "vocab_size": 256 + len(ids),
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        image_token_index=ids["<|image|>"],
        architectures=["UrsaForTokenClassification"],
    )
    torch.manual_seed(seed)
    model = UrsaForTokenClassification(config)
    with torch.no_grad():
        for name, p in model.named_parameters():  # large enough that steps and images change the scores
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
            else:
                p.fill_(1.0 if "norm" in name else 0.0)
    model.save_pretrained(out)
    processor = UrsaProcessor(
        image_processor=VLMImageProcessor(image_size=IMAGE_SIZE),
        tokenizer=AutoTokenizer.from_pretrained(out),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return str(out)
