"""A tiny stand-in for Qwen/Qwen2.5-Math-PRM-7B, whose checkpoint cannot be downloaded here.

What it reproduces, as its model card loads and reads it and as the ports of its weights define the model
(vLLM ``vllm/model_executor/models/qwen2_rm.py``, ``Qwen2ForProcessRewardModel``, 0.34.0 62d4bc3c7): a
``config.json`` of ``model_type`` qwen2 whose ``auto_map`` sends ``AutoModel`` to the checkpoint's own
``modeling_qwen2_rm.Qwen2ForProcessRewardModel``; that class a Qwen2 decoder with a token-classification head
``score = Sequential(Linear(h, h), ReLU(), Linear(h, 2))`` on every position, ``outputs[0]`` the logits
[batch, tokens, 2]; a Qwen2 tokenizer holding the special token ``<extra_0>`` and a ChatML chat template.
Left out: the real weights (random here, seeded), the real vocabulary (bytes, no merges).
"""

from __future__ import annotations

import json
from pathlib import Path

from standins.internlm2_remote import write_tokenizer
from standins.tiny_vlms import CHATML

MODELING = """
import torch
from torch import nn
from transformers import Qwen2Config, Qwen2Model, Qwen2PreTrainedModel


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    config_class = Qwen2Config

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = 2
        self.model = Qwen2Model(config)
        self.score = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(), nn.Linear(config.hidden_size, self.num_labels)
        )
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)[0]
        return (self.score(hidden),)
"""


def write_checkpoint(out: str | Path, seed: int = 7) -> str:
    import torch
    from transformers import Qwen2Config
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "modeling_qwen2_rm.py").write_text(MODELING.lstrip())
    ids = write_tokenizer(out, (("<extra_0>", True),))
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["chat_template"] = CHATML.replace("IMAGE", "''").replace("VIDEO", "''")
    config_path.write_text(json.dumps(tok_config, indent=1))
    config = Qwen2Config(
        vocab_size=256 + len(ids),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2ForProcessRewardModel"]
    config.auto_map = {"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
    config.save_pretrained(out)
    model_cls = get_class_from_dynamic_module("modeling_qwen2_rm.Qwen2ForProcessRewardModel", str(out))
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():
        for name, p in model.named_parameters():  # weights large enough that the classes differ by position
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
            else:
                p.fill_(1.0 if "norm" in name else 0.0)
    model.save_pretrained(out)
    return str(out)
