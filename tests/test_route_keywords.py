"""Every local model class of the installed VLMEvalKit (ms-vlmeval in CI; an upstream checkout through
tools/test_upstream.sh) sampled through its route against a fake engine that records and validates the
keywords it receives.

The class's own ``generate_inner`` needs its checkpoint (cannot exist here), so the test replays the
engine call that code makes, as read by ``vlmeval_prm.policy.code``: the same method (``generate`` or
a remote-code ``chat``) on the same settings dict (``self.kwargs`` spread into it, or not). The engine is
a real transformers model (a one-layer Llama with random weights), so transformers' own validation
rejects a keyword its ``generate`` does not take (``model_kwargs are not used``); its ``chat`` stands in
for a checkpoint's remote-code ``chat`` (``sampling=`` or ``do_sample=`` switches sampling, the rest goes
to ``generate``). Everything the adapter sends goes through its real ``sample``: the settings it patches
in, the ``generate`` it intercepts, its batching.
"""

import copy

import pytest
import torch
import vlmeval.vlm
from transformers import LlamaConfig, LlamaForCausalLM
from vlmeval.config import supported_VLM
from vlmeval.vlm.base import BaseModel

from vlmeval_prm.policy import SamplingConfig
from vlmeval_prm.policy.base import ModelSpec, route_of
from vlmeval_prm.policy.catalog import factory_spec
from vlmeval_prm.policy.code import engine_calls, entry

MESSAGE = [{"type": "text", "value": "How many circles are there?"}]
CFG = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=2)


class Engine(LlamaForCausalLM):
    """The fake engine: records every ``generate`` call's keywords, then lets transformers validate and run it."""

    def __init__(self, config):
        super().__init__(config)
        self.received: list[dict] = []

    def generate(self, *args, **kwargs):
        self.received.append(dict(kwargs))
        return super().generate(*args, **kwargs)

    def chat(self, input_ids, sampling=None, **kwargs):
        """A checkpoint's remote-code chat: ``sampling`` (MiniCPM-V's) or ``do_sample`` (MiniCPM-o 4.5's,
        passed on to generate) picks the decoding; the rest goes to ``generate``."""
        if sampling is not None:
            assert "do_sample" not in kwargs, "both sampling= and do_sample= given"
            kwargs["do_sample"] = sampling
        return self.generate(input_ids, **kwargs)


@pytest.fixture(scope="module")
def engine_config():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return cfg


def local_classes() -> dict[str, type]:
    """Every BaseModel subclass VLMEvalKit exports from ``vlmeval.vlm`` or names in ``supported_VLM``
    (not this plugin's own classes)."""
    found = {}
    for value in vars(vlmeval.vlm).values():
        if isinstance(value, type) and issubclass(value, BaseModel):
            found[value.__name__] = value
    for factory in supported_VLM.values():
        try:
            cls = factory_spec(factory).cls
        except Exception:
            continue
        if issubclass(cls, BaseModel):
            found[cls.__name__] = cls
    return {n: c for n, c in sorted(found.items()) if c is not BaseModel and not c.__module__.startswith("vlmeval_prm")}


CLASSES = local_classes()


def replay(cls: type, settings_attr: str):
    """``cls``'s answering method (``generate_inner``, or ``generate`` where it overrides that) reduced
    to the engine call its code makes."""
    calls = engine_calls(cls, settings_attr)
    carrying = [c for c in calls if c.settings]
    call = (carrying or calls or [None])[0]
    method = call.method if call is not None and call.method in ("generate", "chat") else "generate"

    def generate_inner(self, message, dataset=None):
        settings = dict(getattr(self, settings_attr)) if carrying else {}
        out = getattr(self.model, method)(torch.tensor([[1, 5, 6]]), **settings)
        return " ".join(map(str, out[0].tolist()))

    return generate_inner


def test_the_installed_host_has_local_classes_to_check():
    assert len(CLASSES) > 100, sorted(CLASSES)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_class_samples_through_its_route_with_keywords_the_engine_takes(name, engine_config):
    cls = CLASSES[name]
    adapter, route = route_of(ModelSpec(cls, {}))
    if not route.can_sample:
        assert route.reason, f"{name}: unsupported without a reason"
        return
    assert adapter.engine(ModelSpec(cls, {})) == "transformers"  # flags unset: the transformers backend
    model = object.__new__(cls)
    settings_attr = adapter.settings_attr or "kwargs"
    setattr(model, settings_attr, {})
    model.model = Engine(copy.deepcopy(engine_config)).eval()
    setattr(model, entry(cls), replay(cls, settings_attr).__get__(model))
    samples = adapter.sample(model, MESSAGE, None, 2, CFG, greedy_first=False)
    assert [s.error for s in samples] == [None, None], f"{name} ({route.reason})"
    sampled = [kw for kw in model.model.received if kw.get("do_sample")]
    assert sampled, f"{name}: no generate call sampled: {model.model.received}"
    for kw in sampled:
        assert kw["temperature"] == CFG.temperature and kw["top_p"] == CFG.top_p, kw
    assert getattr(model, settings_attr) == {}, "the adapter left its settings on the model"


def test_minicpm_v_4_6_style_code_samples_with_do_sample(engine_config):
    """Upstream's MiniCPM_V_4_6 (VLMEvalKit e8e78f0, vlmeval/vlm/minicpm_v.py) subclasses MiniCPM_V_4 but
    spreads ``self.kwargs`` into transformers' ``generate``, not the checkpoint's ``chat``. This class
    reproduces that call on ms-vlmeval's MiniCPM_V_4: the MiniCPM route must switch with ``do_sample``
    (``sampling=`` would be rejected by transformers), where MiniCPM_V_4 itself keeps ``sampling``."""

    class MiniCPM_V_4_6(vlmeval.vlm.MiniCPM_V_4):  # noqa: N801 (upstream's name)
        def generate_inner(self, message, dataset=None):
            gen_kwargs = dict(max_new_tokens=8, do_sample=False, num_beams=3, repetition_penalty=1.2)
            gen_kwargs.update(self.kwargs)
            generated_ids = self.model.generate(torch.tensor([[1, 5, 6]]), **gen_kwargs)
            return " ".join(map(str, generated_ids[0].tolist()))

    adapter, route = route_of(ModelSpec(MiniCPM_V_4_6, {}))
    assert adapter.name == "minicpm_v" and "do_sample=True" in route.reason, route.reason
    model = object.__new__(MiniCPM_V_4_6)
    model.kwargs = {}
    model.model = Engine(copy.deepcopy(engine_config)).eval()
    samples = adapter.sample(model, MESSAGE, None, 2, CFG, greedy_first=True)
    assert [s.error for s in samples] == [None, None]
    greedy, sampled = model.model.received
    assert greedy["do_sample"] is False and "sampling" not in greedy
    assert sampled["do_sample"] is True and sampled["num_beams"] == 1 and sampled["temperature"] == 0.7
    assert "sampling=True" in route_of(ModelSpec(vlmeval.vlm.MiniCPM_V_4, {}))[1].reason
