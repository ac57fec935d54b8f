"""Sampling adapters against the real VLMEvalKit wrapper classes.

Every local model below runs its real ``__init__`` and ``generate`` / ``generate_inner``. Faked is
only what cannot exist on this machine: the checkpoint and processor that ``from_pretrained``
would download (replaced by recorders: a transformers ``GenerationMixin`` whose ``generate``
records its kwargs and returns ``num_return_sequences`` distinct rows, and a processor that decodes
token ids to text), the GPU (``device`` set to "cpu" where a wrapper hard-codes CUDA), lmdeploy and
vLLM (need CUDA, not installable here: stand-ins with their call shapes) and HTTP (``requests`` and
``httpx.post``). Real tiny checkpoints through ``python -m vlmeval.run`` are in test_policy_e2e.py.
"""

from __future__ import annotations

import json as _json
import os
import sys
import types
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402
import vlmeval.api  # noqa: E402
import vlmeval.api.base  # noqa: E402
import vlmeval.vlm  # noqa: E402  (slow: imported once for the module)
from PIL import Image  # noqa: E402
from transformers import GenerationMixin  # noqa: E402
from vlmeval.vlm import minicpm_v as minicpm_module  # noqa: E402
from vlmeval.vlm.internvl import internvl_chat as internvl_module  # noqa: E402
from vlmeval.vlm.qwen2_vl import model as qwen_module  # noqa: E402

from vlmeval_prm.counters import COUNTS  # noqa: E402
from vlmeval_prm.policy import SamplingAdapter, SamplingConfig, UnsupportedPolicyError, get_adapter  # noqa: E402
from vlmeval_prm.policy import base as base_module  # noqa: E402
from vlmeval_prm.policy.base import ModelSpec, register_adapter, route_of, supported_families  # noqa: E402

CFG = SamplingConfig(temperature=0.7, top_p=0.95)
TEXT = [{"type": "text", "value": "What is 2 + 3?"}]
ANSWER = "Step 1: add.\n\nStep 2: 2 + 3 = 5.\n\nAnswer: 5"
URL = "http://127.0.0.1:9/v1/chat/completions"  # never reached: the HTTP layer is replaced
EOS, PAD = 2, 0
PROMPT = torch.tensor([[11, 12]])


def decode(ids) -> str:
    """Token ids -> text the way the fakes' tokenizers do: one word per new token."""
    ids = [t for t in torch.as_tensor(ids).tolist() if t not in (EOS, PAD)]
    return " ".join(f"w{t}" for t in ids)


class FakeLM(torch.nn.Module, GenerationMixin):
    """Stands in for a loaded transformers model: records each ``generate`` call; row r of call c
    is the prompt, then token 100 + 10c + r, then end-of-sequence, padded to a common length."""

    def __init__(self, fail_on=(), keep_prompt=True):
        super().__init__()
        self.calls: list[dict] = []
        self.fail_on, self.keep_prompt = set(fail_on), keep_prompt
        self.generation_config = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)

    def generate(self, *args, **kwargs):
        self.calls.append(kwargs)
        c = len(self.calls) - 1
        if c in self.fail_on:
            raise RuntimeError("CUDA out of memory")
        n = kwargs.get("num_return_sequences", 1)
        rows = [[100 + 10 * c + r] + [EOS] + [PAD] * (r % 2) for r in range(n)]
        width = max(map(len, rows))
        rows = torch.tensor([row + [PAD] * (width - len(row)) for row in rows])
        prompt = kwargs.get("input_ids", PROMPT)
        return torch.cat([prompt.repeat(n, 1), rows], dim=1) if self.keep_prompt else rows

    def cuda(self, *args, **kwargs):  # no GPU here
        return self


class Batch(dict):
    """What a processor returns: a dict of tensors with ``.to`` and attribute access."""

    def to(self, *args, **kwargs):
        return self

    @property
    def input_ids(self):
        return self["input_ids"]


class FakeProcessor:
    """Stands in for the hub processor: constant prompt (two tokens), decodes with ``decode``."""

    def __init__(self, prefix=""):
        self.prefix = prefix
        self.tokenizer = SimpleNamespace(batch_decode=lambda ids, **kw: [prefix + decode(i) for i in ids])

    def apply_chat_template(self, *args, **kwargs):
        return "<prompt>"

    def __call__(self, *args, **kwargs):
        return Batch(input_ids=PROMPT.clone())

    def decode(self, ids, **kwargs):
        return self.prefix + decode(ids)


def loader(obj):
    return SimpleNamespace(from_pretrained=lambda *a, **k: obj)


def patch_transformers(monkeypatch, **classes):
    """Wrappers import model classes inside __init__ with ``from transformers import ...``, which
    reads sys.modules (importing vlmeval replaces that entry, so the module object bound above
    is not the one they see)."""
    for name, obj in classes.items():
        monkeypatch.setattr(sys.modules["transformers"], name, loader(obj))


@pytest.fixture(autouse=True)
def _restore_use_cot():
    before = os.environ.get("USE_COT")
    yield
    if before is None:
        os.environ.pop("USE_COT", None)
    else:
        os.environ["USE_COT"] = before


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "figure.png"
    Image.new("RGB", (64, 48), "white").save(path)
    return str(path)


class FakeInternVLRemote(torch.nn.Module):
    """InternVL's remote-code model: ``chat`` calls its language model's ``generate`` with the
    generation_config dict as kwargs and decodes row 0 (modeling_internvl_chat.py), here with the
    reply given by ``reply`` around the decoded tokens."""

    def __init__(self, reply="{}"):
        super().__init__()
        self.language_model = FakeLM(keep_prompt=False)
        self.reply = reply

    def chat(self, tokenizer, pixel_values, question, generation_config, **kwargs):
        out = self.language_model.generate(inputs_embeds=torch.ones(1, 2, 3), **generation_config)
        return self.reply.format(decode(out[0]))

    def cuda(self, *args, **kwargs):
        return self


@pytest.fixture
def internvl(monkeypatch):
    monkeypatch.setattr(internvl_module, "AutoTokenizer", loader(object()))
    monkeypatch.setattr(internvl_module, "AutoModel", loader(FakeInternVLRemote()))
    model = vlmeval.vlm.InternVLChat(model_path="OpenGVLab/InternVL2_5-8B", version="V2.0")
    model.device = "cpu"  # the wrapper hard-codes cuda
    return model


@pytest.fixture
def qwen(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text(_json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"]}))
    monkeypatch.setattr(qwen_module, "get_gpu_memory", lambda: [80000])  # the wrapper asserts a GPU
    patch_transformers(monkeypatch, AutoProcessor=FakeProcessor(), Qwen2_5_VLForConditionalGeneration=FakeLM())
    return vlmeval.vlm.Qwen2VLChat(model_path=str(tmp_path))


@pytest.fixture
def minicpm(monkeypatch):
    monkeypatch.setattr(minicpm_module, "AutoTokenizer", loader(object()))
    monkeypatch.setattr(minicpm_module, "AutoModel", loader(ChatRecorder()))
    return vlmeval.vlm.MiniCPM_V_2_6(model_path="openbmb/MiniCPM-V-2_6")


class ChatRecorder(torch.nn.Module):
    """MiniCPM's remote ``chat``: records the kwargs it is given."""

    def __init__(self, result=ANSWER):
        super().__init__()
        self.calls, self.result = [], result

    def chat(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.result

    def cuda(self, *args, **kwargs):
        return self


def sampled(kwargs: dict, temperature=0.7, top_p=0.95) -> bool:
    return kwargs["do_sample"] is True and kwargs["temperature"] == temperature and kwargs["top_p"] == top_p


# -- InternVL: batched through the remote chat's language model ------------------------------------


def test_internvl_samples_n_in_one_generate_call_with_requested_settings(internvl, image):
    kwargs_before = dict(internvl.kwargs)
    adapter = get_adapter(internvl)
    assert adapter.route(internvl).route == "batched"
    cfg = SamplingConfig(temperature=0.9, top_p=0.8, max_new_tokens=256)
    message = [{"type": "image", "value": image}] + TEXT  # generate_v2 divides by the image count
    out = adapter.sample(internvl, message, None, 4, cfg, greedy_first=True)

    assert all(s.ok for s in out) and len({s.text for s in out}) == 4
    greedy, batch = internvl.model.language_model.calls  # 2 generate calls for 4 candidates
    assert greedy["do_sample"] is False and "num_return_sequences" not in greedy
    # generate_v2 alone would send temperature 0.6 / top_p 0.95
    assert sampled(batch, 0.9, 0.8) and batch["top_k"] == 0 and batch["max_new_tokens"] == 256
    assert batch["num_return_sequences"] == 3 and batch["num_beams"] == 1
    assert [s.text for s in out[1:]] == ["w110", "w111", "w112"]  # each row once, in order
    assert out[0].settings["do_sample"] is False and out[1].settings["temperature"] == 0.9
    assert internvl.kwargs == kwargs_before
    assert "generate" not in vars(internvl.model.language_model)  # the per-call wrapper is gone


def test_batch_size_splits_the_engine_calls(internvl, image):
    out = get_adapter(internvl).sample(
        internvl, [{"type": "image", "value": image}] + TEXT, None, 5, SamplingConfig(batch_size=2), greedy_first=False
    )
    assert len({s.text for s in out}) == 5
    # the fifth candidate alone: a plain call
    assert [c.get("num_return_sequences") for c in internvl.model.language_model.calls] == [2, 2, None]


def test_internvl_cot_is_scoped_not_process_wide(internvl, monkeypatch):
    monkeypatch.delenv("USE_COT", raising=False)
    adapter = get_adapter(internvl)
    assert adapter.enable_cot(internvl) is True
    assert internvl.use_cot is True and "USE_COT" not in os.environ
    with adapter.scope(internvl):
        assert os.environ["USE_COT"] == "1"
    assert "USE_COT" not in os.environ


def test_internvl_mpo_keeps_the_whole_reasoning_and_extracts_like_the_model(monkeypatch, image):
    remote = FakeInternVLRemote(reply="Step 1: look.\n\nStep 2: {}.\n\nFinal answer: B")
    monkeypatch.setattr(internvl_module, "AutoTokenizer", loader(object()))
    monkeypatch.setattr(internvl_module, "AutoModel", loader(remote))
    model = vlmeval.vlm.InternVLChat(model_path="OpenGVLab/InternVL2_5-8B-MPO", version="V2.0", use_mpo_prompt=True)
    model.device = "cpu"
    adapter = get_adapter(model)
    adapter.enable_cot(model)
    message = [{"type": "image", "value": image}] + TEXT
    assert model.generate(message, dataset="MMBench_DEV_EN") == "B"  # VLMEvalKit alone: the letter only

    out = adapter.sample(model, message, "MMBench_DEV_EN", 2, CFG)
    assert all(s.text.startswith("Step 1: look.") and s.text.endswith("Final answer: B") for s in out)
    assert adapter.final_answer(model, out[0].text, "MMBench_DEV_EN") == "B"
    assert internvl_module.mpo_post_processing.__name__ == "mpo_post_processing"  # put back


def test_internvl_with_its_own_best_of_n_is_refused(internvl):
    internvl.best_of_n = 8
    with pytest.raises(UnsupportedPolicyError, match="best_of_n=8"):
        get_adapter(internvl)


# -- Qwen2-VL -------------------------------------------------------------------------------------


def test_qwen_transformers_path_is_one_batched_call_and_restores(qwen):
    before = dict(qwen.generate_kwargs)
    assert before["top_k"] == 1  # VLMEvalKit's default: greedy even with do_sample=True
    calls_before = COUNTS["policy_generate_calls"]
    out = get_adapter(qwen).sample(qwen, TEXT, None, 8, CFG)

    assert [s.text for s in out] == [f"w{100 + r}" for r in range(8)]
    [call] = qwen.model.calls
    assert sampled(call) and call["top_k"] == 0 and call["num_return_sequences"] == 8
    assert call["max_new_tokens"] == 2048  # the wrapper's own limit kept
    assert COUNTS["policy_generate_calls"] - calls_before == 1
    assert qwen.generate_kwargs == before


def test_qwen_failed_batch_fails_every_candidate_it_carried(qwen):
    qwen.model.fail_on = {0}
    out = get_adapter(qwen).sample(qwen, TEXT, None, 3, CFG)
    assert len(out) == 3 and all(s.text is None and "out of memory" in s.error for s in out)
    assert len(qwen.model.calls) == 1  # not retried candidate by candidate


def test_qwen_replay_refuses_a_different_prompt(qwen):
    prompts = iter([PROMPT, torch.tensor([[11, 99]])])

    class Changing(FakeProcessor):
        def __call__(self, *args, **kwargs):
            return Batch(input_ids=next(prompts).clone())

    qwen.processor = Changing()
    out = get_adapter(qwen).sample(qwen, TEXT, None, 2, CFG)
    assert out[0].ok and out[1].text is None and "different prompt" in out[1].error


@pytest.fixture
def fake_lmdeploy(monkeypatch):
    """lmdeploy's GenerationConfig defaults, do_sample=False (greedy) included."""

    @dataclass
    class GenerationConfig:
        n: int = 1
        max_new_tokens: int = 512
        do_sample: bool = False
        top_p: float = 1.0
        top_k: int = 50
        temperature: float = 0.8
        repetition_penalty: float = 1.0
        random_seed: int | None = None

    root, vl, constants = (types.ModuleType(n) for n in ("lmdeploy", "lmdeploy.vl", "lmdeploy.vl.constants"))
    root.GenerationConfig, constants.IMAGE_TOKEN = GenerationConfig, "<IMAGE_TOKEN>"
    for mod in (root, vl, constants):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)


class FakePipeline:
    """An lmdeploy pipeline: one response per prompt of the batch."""

    def __init__(self):
        self.calls = []

    def __call__(self, messages_list, gen_config=None):
        self.calls.append((len(messages_list), gen_config))
        start = sum(n for n, _ in self.calls[:-1])
        return [SimpleNamespace(text=f"{ANSWER} #{start + i}") for i in range(len(messages_list))]


def test_qwen_lmdeploy_path_is_one_batched_pipeline_call(qwen, fake_lmdeploy):
    pipe = FakePipeline()
    qwen.use_lmdeploy, qwen.model = True, pipe
    qwen.generate(TEXT)
    assert pipe.calls[0][1].do_sample is False  # what VLMEvalKit alone sends: greedy in lmdeploy

    out = get_adapter(qwen).sample(qwen, TEXT, None, 4, SamplingConfig(top_k=20, max_new_tokens=64))
    assert len({s.text for s in out}) == 4 and all(s.ok for s in out)
    ((batch, gen),) = pipe.calls[1:]
    assert batch == 4 and sampled(vars(gen)) and gen.top_k == 20 and gen.max_new_tokens == 64
    assert gen.random_seed is None
    assert qwen.model is pipe


@pytest.fixture
def fake_vllm(monkeypatch):
    """vLLM's LLM and SamplingParams call shapes (vLLM needs a GPU): generate returns one
    RequestOutput per prompt with ``n`` completions."""

    @dataclass
    class SamplingParams:
        n: int = 1
        temperature: float = 1.0
        top_p: float = 1.0
        top_k: int = 0
        max_tokens: int = 16
        stop_token_ids: list | None = None
        seed: int | None = None

        def clone(self):
            return SamplingParams(**vars(self))

    class LLM:
        def __init__(self, **kwargs):
            self.calls = []

        def generate(self, prompts, sampling_params=None):
            self.calls.append(sampling_params)
            outs = [SimpleNamespace(text=f"{ANSWER} #{i}") for i in range(sampling_params.n)]
            return [SimpleNamespace(prompt=prompts, outputs=outs)]

    root = types.ModuleType("vllm")
    root.LLM, root.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", root)
    return root


def test_qwen_vllm_path_samples_with_n(monkeypatch, tmp_path, fake_vllm):
    (tmp_path / "config.json").write_text(_json.dumps({"architectures": ["Qwen2VLForConditionalGeneration"]}))
    monkeypatch.setattr(qwen_module, "get_gpu_memory", lambda: [80000])
    patch_transformers(monkeypatch, Qwen2VLProcessor=FakeProcessor())
    model = vlmeval.vlm.Qwen2VLChat(model_path=str(tmp_path), use_vllm=True)
    assert route_of(ModelSpec(vlmeval.vlm.Qwen2VLChat, {"use_vllm": True}))[1] == get_adapter(model).route(model)

    # an image: text-only prompts break the wrapper's vLLM path (``videos_nd`` unbound)
    out = get_adapter(model).sample(model, [{"type": "image", "value": _png()}] + TEXT, None, 6, CFG)
    assert [s.text for s in out] == [f"{ANSWER} #{i}" for i in range(6)], out[0].error
    [params] = model.llm.calls
    assert params.n == 6 and params.temperature == 0.7 and params.top_p == 0.95 and params.top_k == -1
    assert params.max_tokens == 2048 and params.seed is None  # the wrapper's own limit kept


def test_subclass_matches_along_mro_while_it_runs_the_registered_code(qwen):
    """A subclass that keeps Qwen2VLChat's generate_inner keeps its adapter; Aguvis overrides it, so its
    route comes from its own code (the generic one), and the route says why."""
    sub_cls = type("Qwen2VLSub", (vlmeval.vlm.Qwen2VLChat,), {})
    sub = sub_cls.__new__(sub_cls)
    sub.model = qwen.model
    assert get_adapter(sub).name == "qwen2_vl"
    aguvis = vlmeval.vlm.Qwen2VLChatAguvis.__new__(vlmeval.vlm.Qwen2VLChatAguvis)
    aguvis.model = qwen.model
    assert get_adapter(aguvis).name == "generic"
    reason = route_of(aguvis)[1].reason
    assert "Qwen2VLChatAguvis.generate_inner is Qwen2VLChatAguvis's own, not Qwen2VLChat's" in reason


# -- LLaVA (HF-native), batched; generic route for classes without an adapter --------------------


def test_llava_onevision_hf_hardcoded_call_is_batched(monkeypatch):
    inner = FakeLM()
    patch_transformers(monkeypatch, AutoProcessor=FakeProcessor(), LlavaOnevisionForConditionalGeneration=inner)
    model = vlmeval.vlm.LLaVA_OneVision_HF(model_path="llava-hf/llava-onevision-qwen2-0.5b-ov-hf")

    out = get_adapter(model).sample(model, TEXT, "MathVista_MINI", 3, CFG, greedy_first=True)
    assert len({s.text for s in out}) == 3
    greedy, batch = inner.calls
    assert greedy["do_sample"] is False and batch["num_return_sequences"] == 2
    assert sampled(batch) and batch["max_new_tokens"] == 2048  # its own limit kept
    assert "generate" not in vars(inner)


def test_llava_next_kwargs_are_left_alone(monkeypatch):
    inner = FakeLM()
    patch_transformers(
        monkeypatch, LlavaNextProcessor=FakeProcessor("ASSISTANT: "), LlavaNextForConditionalGeneration=inner
    )
    model = vlmeval.vlm.LLaVA_Next(model_path="llava-hf/llava-v1.6-vicuna-7b-hf")
    before = dict(model.kwargs)
    out = get_adapter(model).sample(model, TEXT, None, 2, CFG)
    assert len({s.text for s in out}) == 2 and len(inner.calls) == 1 and sampled(inner.calls[0])
    assert model.kwargs == before and before["do_sample"] is False


def test_generic_route_merges_settings_into_each_call(monkeypatch):
    """A class with no adapter of its own (PaliGemma's, with the generic adapter forced)."""
    inner = FakeLM()
    patch_transformers(monkeypatch, AutoProcessor=FakeProcessor(), PaliGemmaForConditionalGeneration=inner)
    model = vlmeval.vlm.PaliGemma(model_path="google/paligemma-3b-mix-448")
    monkeypatch.setitem(base_module._REGISTRY, "PaliGemma", base_module._REGISTRY["BaseModel"])
    message = [{"type": "image", "value": _png()}] + TEXT
    adapter = get_adapter(model)
    assert adapter.name == "generic" and adapter.route(model).route == "sequential"

    out = adapter.sample(model, message, None, 3, CFG)
    assert len(inner.calls) == 3 and all(sampled(c) for c in inner.calls)  # PaliGemma hard-codes do_sample=False
    assert all(c["max_new_tokens"] == 512 and "num_return_sequences" not in c for c in inner.calls)
    assert len({s.text for s in out}) == 3


def test_generic_route_fails_loudly_when_no_generate_is_reached(monkeypatch):
    inner = FakeLM()
    patch_transformers(monkeypatch, AutoProcessor=FakeProcessor(), PaliGemmaForConditionalGeneration=inner)
    model = vlmeval.vlm.PaliGemma(model_path="google/paligemma-3b-mix-448")
    model.generate_inner = lambda message, dataset=None: "a greedy answer from somewhere else"
    out = get_adapter(model).sample(model, TEXT, None, 2, CFG)
    assert all(s.text is None and "without calling a transformers generate" in s.error for s in out)


def test_class_without_a_transformers_model_is_refused():
    model = vlmeval.vlm.Phi3Vision.__new__(vlmeval.vlm.Phi3Vision)
    with pytest.raises(UnsupportedPolicyError, match="Phi3Vision .* no transformers model"):
        get_adapter(model)


def _png() -> str:
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "x.png")
    Image.new("RGB", (32, 32), "white").save(path)
    return path


# -- MiniCPM-V ------------------------------------------------------------------------------------


def test_minicpm_sampling_flag_and_beams(minicpm):
    out = get_adapter(minicpm).sample(minicpm, TEXT, None, 2, CFG, greedy_first=True)
    assert all(s.ok for s in out)
    greedy, sampled_call = minicpm.model.calls
    assert greedy["sampling"] is False and greedy["num_beams"] == 3  # the family's own decoding
    assert sampled_call["sampling"] is True and sampled_call["num_beams"] == 1
    assert sampled_call["temperature"] == 0.7 and sampled_call["top_p"] == 0.95 and sampled_call["top_k"] == 0
    assert minicpm.kwargs == {}


def test_minicpm_enable_cot(minicpm):
    assert minicpm.use_cot("MathVista_MINI") is False
    assert get_adapter(minicpm).enable_cot(minicpm) is True
    assert minicpm.use_cot("MathVista_MINI") is True
    old = vlmeval.vlm.MiniCPM_V.__new__(vlmeval.vlm.MiniCPM_V)
    old.kwargs = {}
    assert get_adapter(old).enable_cot(old) is False  # no CoT mode: caller adds the instruction


def test_minicpm_answer_extraction_keeps_the_reasoning(monkeypatch):
    reply = "Step 1: count.\n\nStep 2: three.\n\nAnswer: C"
    monkeypatch.setattr(minicpm_module, "AutoTokenizer", loader(object()))
    monkeypatch.setattr(minicpm_module, "AutoModel", loader(ChatRecorder(reply)))
    model = vlmeval.vlm.MiniCPM_o_2_6(model_path="openbmb/MiniCPM-o-2_6")
    adapter = get_adapter(model)
    adapter.enable_cot(model)
    message = [{"type": "image", "value": _png()}] + TEXT
    assert model.generate(message, dataset="MMBench_DEV_EN") == "C"  # VLMEvalKit alone: the letter
    out = adapter.sample(model, message, "MMBench_DEV_EN", 2, CFG)
    assert [s.text for s in out] == [reply, reply]
    assert adapter.final_answer(model, reply, "MMBench_DEV_EN") == "C"
    assert "extract_answer" not in vars(model)


def test_minicpm_v_short_answer_cap_is_raised_for_reasoning(monkeypatch):
    monkeypatch.setattr(minicpm_module, "AutoTokenizer", loader(object()))
    monkeypatch.setattr(minicpm_module, "AutoModel", loader(ChatRecorder()))
    model = vlmeval.vlm.MiniCPM_V(model_path="openbmb/MiniCPM-V")
    model.model.chat = lambda *a, **k: (ChatRecorder.chat(model.model, *a, **k), None, None)[0]
    message = [{"type": "image", "value": _png()}] + TEXT
    get_adapter(model).sample(model, message, "MMBench_DEV_EN", 1, SamplingConfig(reasoning_tokens=1500))
    get_adapter(model).sample(model, message, "MMBench_DEV_EN", 1, SamplingConfig(max_new_tokens=300))
    assert [c["max_new_tokens"] for c in model.model.calls] == [1500, 300]  # VLMEvalKit alone: 20


# -- API wrappers ---------------------------------------------------------------------------------


@pytest.fixture
def http(monkeypatch):
    """Replaces the HTTP layer; records each JSON payload. ``honour_n``: answer ``n`` choices."""
    payloads, status, honour_n = [], [200], [True]

    def post(url, headers=None, data=None, json=None, **kwargs):
        payload = json if json is not None else _json.loads(data)
        payloads.append(payload)
        n = payload.get("n", 1) if honour_n[0] else 1
        body = (
            {"choices": [{"message": {"content": f"{ANSWER} #{i}"}} for i in range(n)], "content": [{"text": ANSWER}]}
            if status[0] == 200
            else {"message": "boom"}
        )

        def raise_for_status():
            if status[0] >= 400:
                raise requests.HTTPError(f"HTTP {status[0]}")

        return SimpleNamespace(
            status_code=status[0], text=_json.dumps(body), json=lambda: body, raise_for_status=raise_for_status
        )

    monkeypatch.setattr(requests, "post", post)  # VLMEvalKit's wrappers, one candidate per request
    monkeypatch.setattr(requests, "request", lambda method, url, **kw: post(url, **kw))
    monkeypatch.setattr(httpx, "post", post)  # the adapter's own n=N request
    monkeypatch.setattr(vlmeval.api.base.time, "sleep", lambda s: None)
    return SimpleNamespace(payloads=payloads, status=status, honour_n=honour_n)


def gpt4v(name="gpt-4o-mini"):
    return vlmeval.api.GPT4V(model=name, key="sk-test", api_base=URL, retry=1, verbose=False)


def test_gpt4v_sends_settings_per_request(http):
    model = gpt4v()
    with pytest.raises(TypeError):  # why the adapter goes through BaseAPI.generate
        model.generate(TEXT, dataset=None, temperature=0.7)

    cfg = SamplingConfig(max_new_tokens=512)
    out = get_adapter(model).sample(model, TEXT, "MathVista_MINI", 3, cfg, greedy_first=True)
    assert all(s.ok for s in out) and len(out) == 3
    sampled_req, greedy = http.payloads  # the two sampled candidates share ONE request (n=2)
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy and "n" not in greedy
    assert sampled_req["n"] == 2 and sampled_req["temperature"] == 0.7 and sampled_req["top_p"] == 0.95
    assert sampled_req["max_tokens"] == 512 and sampled_req["messages"] == model.prepare_inputs(
        model.preproc_content(TEXT)
    )
    assert all("top_k" not in p and "dataset" not in p for p in http.payloads)
    assert model.temperature == 0 and model.default_kwargs == {}


def test_reasoning_model_without_temperature_samples_with_n(http):
    model = gpt4v("o3-mini")
    adapter = get_adapter(model)
    assert adapter.route(model).route == "api-n" and "no temperature" in adapter.route(model).reason
    out = adapter.sample(model, TEXT, None, 4, SamplingConfig(max_new_tokens=300), greedy_first=True)
    assert len({s.text for s in out}) == 4
    [req] = http.payloads  # no greedy candidate: all four from one request
    assert req["n"] == 4 and req["max_completion_tokens"] == 300
    assert "temperature" not in req and "top_p" not in req and "max_tokens" not in req
    assert all(s.settings["temperature"] is None and s.settings["do_sample"] for s in out)


def test_server_ignoring_n_falls_back_to_parallel_requests(http, caplog):
    model = gpt4v()
    http.honour_n[0] = False
    out = get_adapter(model).sample(model, TEXT, None, 3, CFG)
    assert all(s.ok for s in out) and len(out) == 3
    assert [p.get("n") for p in http.payloads] == [3, None, None, None] and "does not honour n" in caplog.text
    get_adapter(model).sample(model, TEXT, None, 2, CFG)  # remembered: no second n request
    assert [p.get("n") for p in http.payloads[4:]] == [None, None]


def test_failed_n_request_fails_every_candidate_it_carried(http):
    model = gpt4v()
    http.status[0] = 500
    out = get_adapter(model).sample(model, TEXT, None, 3, CFG)
    assert len(out) == 3 and all(s.text is None and "500" in s.error for s in out)


def test_api_failure_becomes_sample_error(http):
    model = gpt4v()
    http.status[0] = 500
    [s] = get_adapter(model).sample(model, TEXT, None, 1, CFG)
    assert s.text is None and "Failed to obtain answer" in s.error and s.settings["temperature"] == 0.7


def test_lmdeploy_api_sends_settings_per_request(http):
    model = vlmeval.api.LMDeployAPI(model="InternVL2_5-8B", api_base=URL, key="sk-test", retry=1, verbose=False)
    out = get_adapter(model).sample(model, TEXT, "MathVista_MINI", 2, SamplingConfig(top_k=20))
    assert all(s.ok for s in out) and len(out) == 2
    assert [p["n"] for p in http.payloads] == [2]
    for p in http.payloads:
        assert p["temperature"] == 0.7 and p["top_p"] == 0.95 and p["top_k"] == 20
        assert p["max_tokens"] == 16384 and "dataset" not in p  # the wrapper's own limit kept
    assert model.default_kwargs["temperature"] == 0.0


def test_lmdeploy_api_prompt_adapter_forcing_greedy_is_refused(http):
    model = vlmeval.api.LMDeployAPI(
        model="InternVL3-8B", api_base=URL, key="sk-test", retry=1, verbose=False, custom_prompt="internvl3"
    )
    adapter = get_adapter(model)
    with pytest.raises(UnsupportedPolicyError, match="temperature"):
        adapter.sample(model, TEXT, "MMBench_DEV_EN", 2, CFG)
    assert http.payloads == []


def test_claude_gets_n_parallel_requests_with_what_it_forwards(http, monkeypatch):
    model = vlmeval.api.Claude3V(backend="official", model="claude-3-5-sonnet", key="sk-test", retry=1, verbose=False)
    adapter = get_adapter(model)
    assert adapter.route(model).route == "api-parallel" and "top_p not sent" in adapter.route(model).reason
    out = adapter.sample(model, TEXT, "MMBench_DEV_EN", 3, SamplingConfig(top_k=40, max_new_tokens=900))
    assert all(s.ok for s in out) and len(http.payloads) == 3, out[0].error
    for p in http.payloads:
        assert p["temperature"] == 0.7 and p["top_k"] == 40 and p["max_tokens"] == 900
        assert "top_p" not in p and "dataset" not in p
    assert all(s.settings["top_p"] is None for s in out)  # recorded as left to the server


def test_together_sends_temperature_only(http):
    model = vlmeval.api.TogetherAPI(model="meta-llama/Llama-Vision-Free", key="sk-test", retry=1, verbose=False)
    out = get_adapter(model).sample(model, TEXT, None, 2, CFG)
    assert all(s.ok for s in out)
    assert [(p["temperature"], "top_p" in p) for p in http.payloads] == [(0.7, False)] * 2


def test_hard_coded_greedy_api_is_refused():
    model = vlmeval.api.GLMVisionAPI.__new__(vlmeval.api.GLMVisionAPI)
    with pytest.raises(UnsupportedPolicyError, match="do_sample=False"):
        get_adapter(model)


def test_one_by_one_candidates_are_handed_over_as_they_exist(http):
    """BestOfN stores each candidate as it completes, so a kill loses at most the requests in flight."""
    model = gpt4v()
    model._vlmeval_prm_no_n = True  # a server that refused n: one request per candidate
    seen = []
    get_adapter(model).sample(model, TEXT, None, 3, CFG, on_sample=lambda i, s: seen.append((i, s.ok)))
    assert sorted(seen) == [(0, True), (1, True), (2, True)]


# -- registry and config --------------------------------------------------------------------------


def test_same_name_in_another_hierarchy_is_not_matched():
    # ARM_thinker derives from arm_thinker.LMDeployWrapper, not from the OpenAISDKWrapper family
    model = vlmeval.api.ARM_thinker.__new__(vlmeval.api.ARM_thinker)
    with pytest.raises(UnsupportedPolicyError, match="ARM_thinker"):
        get_adapter(model)


def test_registering_a_taken_name_fails():
    class Other(SamplingAdapter):
        name = "other"

    with pytest.raises(ValueError, match="OpenAIWrapper"):
        register_adapter("OpenAIWrapper")(Other)
    assert get_adapter(gpt4v()).name == "openai"
    assert {"InternVLChat", "Qwen2VLChat", "BaseModel", "BaseAPI", "OpenAIWrapper"} <= set(supported_families())


@pytest.mark.parametrize(
    "kwargs", [{"temperature": 0}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": 1}, {"max_new_tokens": 0}, {"batch_size": 0}]
)
def test_config_rejects_settings_that_are_not_sampling(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)


def test_config_record():
    assert SamplingConfig(top_k=40).to_record() == {
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 40,
        "max_new_tokens": None,
        "first_greedy": False,
        "batch_size": None,
        "reasoning_tokens": 2048,
    }
