"""Sampling adapters against the real VLMEvalKit wrapper classes.

Every local model below runs its real ``__init__`` and ``generate`` / ``generate_inner``. Faked is
only what cannot exist on this machine: the checkpoint and processor that ``from_pretrained``
would download (replaced by recorders that capture the generation kwargs they receive), the GPU
(``device`` set to "cpu" where a wrapper hard-codes CUDA), lmdeploy (needs CUDA, not installable
here: a stand-in ``GenerationConfig`` with lmdeploy's field defaults) and HTTP (``requests.post`` and ``httpx.post``).
"""

from __future__ import annotations

import json
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
from vlmeval.vlm import minicpm_v as minicpm_module  # noqa: E402
from vlmeval.vlm.internvl import internvl_chat as internvl_module  # noqa: E402
from vlmeval.vlm.qwen2_vl import model as qwen_module  # noqa: E402

from vlmeval_prm.policy import SamplingAdapter, SamplingConfig, UnsupportedPolicyError, get_adapter  # noqa: E402
from vlmeval_prm.policy.base import register_adapter, supported_families  # noqa: E402

CFG = SamplingConfig(temperature=0.7, top_p=0.95)
TEXT = [{"type": "text", "value": "What is 2 + 3?"}]
ANSWER = "Step 1: add.\n\nStep 2: 2 + 3 = 5.\n\nAnswer: 5"
URL = "http://127.0.0.1:9/v1/chat/completions"  # never reached: the HTTP layer is replaced


class Recorder:
    """Stands in for a loaded checkpoint: records the kwargs of each call, fails on request."""

    def __init__(self, result=ANSWER, fail_on=()):
        self.calls: list[dict] = []
        self.result, self.fail_on = result, set(fail_on)

    def record(self, kwargs: dict):
        self.calls.append(kwargs)
        if len(self.calls) - 1 in self.fail_on:
            raise RuntimeError("CUDA out of memory")
        return self.result

    # torch-module plumbing used by the wrappers' __init__
    def eval(self):
        return self

    def to(self, *args, **kwargs):
        return self

    def cuda(self):
        return self


class ChatRecorder(Recorder):
    def chat(self, *args, **kwargs):
        return self.record(kwargs)


class GenerateRecorder(Recorder):
    """``generate`` returns token ids: the prompt's two tokens plus three new ones."""

    def generate(self, *args, **kwargs):
        self.record(kwargs)
        return torch.tensor([[1, 2, 7, 8, 9]])


class Batch(dict):
    """What a processor returns: a dict of tensors with ``.to`` and attribute access."""

    def to(self, *args, **kwargs):
        return self

    @property
    def input_ids(self):
        return self["input_ids"]


class FakeProcessor:
    """Stands in for the hub processor: constant prompt, two input tokens, fixed decoded text."""

    def __init__(self, decoded=ANSWER):
        self.decoded = decoded
        self.tokenizer = SimpleNamespace(batch_decode=lambda ids, **kw: [decoded])

    def apply_chat_template(self, *args, **kwargs):
        return "<prompt>"

    def __call__(self, *args, **kwargs):
        return Batch(input_ids=torch.tensor([[1, 2]]))

    def decode(self, *args, **kwargs):
        return self.decoded


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


@pytest.fixture
def internvl(monkeypatch):
    inner = ChatRecorder()
    monkeypatch.setattr(internvl_module, "AutoTokenizer", loader(object()))
    monkeypatch.setattr(internvl_module, "AutoModel", loader(inner))
    model = vlmeval.vlm.InternVLChat(model_path="OpenGVLab/InternVL2_5-8B", version="V2.0")
    model.device = "cpu"  # the wrapper hard-codes cuda
    return model


@pytest.fixture
def qwen(monkeypatch, tmp_path):
    arch = {"architectures": ["Qwen2_5_VLForConditionalGeneration"]}
    (tmp_path / "config.json").write_text(json.dumps(arch))
    monkeypatch.setattr(qwen_module, "get_gpu_memory", lambda: [80000])  # the wrapper asserts a GPU
    patch_transformers(monkeypatch, AutoProcessor=FakeProcessor(),
                       Qwen2_5_VLForConditionalGeneration=GenerateRecorder())
    return vlmeval.vlm.Qwen2VLChat(model_path=str(tmp_path))


@pytest.fixture
def minicpm(monkeypatch):
    monkeypatch.setattr(minicpm_module, "AutoTokenizer", loader(object()))
    monkeypatch.setattr(minicpm_module, "AutoModel", loader(ChatRecorder()))
    return vlmeval.vlm.MiniCPM_V_2_6(model_path="openbmb/MiniCPM-V-2_6")


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
    def __init__(self):
        self.configs = []

    def __call__(self, messages_list, gen_config=None):
        self.configs.append(gen_config)
        return [SimpleNamespace(text=ANSWER)]


def sampled(kwargs: dict, temperature=0.7, top_p=0.95) -> bool:
    return kwargs["do_sample"] is True and kwargs["temperature"] == temperature and kwargs["top_p"] == top_p


# -- InternVL ---------------------------------------------------------------------------------------

def test_internvl_gets_requested_settings_not_its_hardcoded_bon_values(internvl, image):
    kwargs_before = dict(internvl.kwargs)
    adapter = get_adapter(internvl)
    cfg = SamplingConfig(temperature=0.9, top_p=0.8, max_new_tokens=256)
    message = [{"type": "image", "value": image}] + TEXT  # generate_v2 divides by the image count
    out = adapter.sample(internvl, message, None, 3, cfg, greedy_first=True)

    assert [s.text for s in out] == [ANSWER] * 3 and all(s.error is None for s in out)
    seen = internvl.model.calls
    assert [c["generation_config"]["do_sample"] for c in seen] == [False, True, True]
    for call in seen[1:]:  # generate_v2 alone would send temperature 0.6 / top_p 0.95
        assert sampled(call["generation_config"], 0.9, 0.8)
        assert call["generation_config"]["top_k"] == 0 and call["generation_config"]["max_new_tokens"] == 256
    assert out[0].settings["do_sample"] is False and out[1].settings["temperature"] == 0.9
    assert internvl.kwargs == kwargs_before
    assert "chat" not in vars(internvl.model)  # the per-call wrapper is gone


def test_internvl_greedy_first_off_keeps_model_limit(internvl, image):
    get_adapter(internvl).sample(internvl, [{"type": "image", "value": image}] + TEXT, None, 2, CFG, False)
    assert all(sampled(c["generation_config"]) for c in internvl.model.calls)
    assert all(c["generation_config"]["max_new_tokens"] == 4096 for c in internvl.model.calls)


def test_internvl_enable_cot_sets_flag_and_env(internvl, monkeypatch):
    monkeypatch.delenv("USE_COT", raising=False)
    assert get_adapter(internvl).enable_cot(internvl) is True
    assert internvl.use_cot is True and os.environ["USE_COT"] == "1"


def test_internvl_with_its_own_best_of_n_is_refused(internvl):
    internvl.best_of_n = 8
    with pytest.raises(UnsupportedPolicyError, match="best_of_n=8"):
        get_adapter(internvl)


# -- Qwen2-VL -------------------------------------------------------------------------------------

def test_qwen_transformers_path_samples_and_restores(qwen):
    before = dict(qwen.generate_kwargs)
    assert before["top_k"] == 1  # VLMEvalKit's default: greedy even with do_sample=True
    out = get_adapter(qwen).sample(qwen, TEXT, None, 3, CFG, greedy_first=True)

    assert all(s.ok for s in out)
    first, *rest = qwen.model.calls
    assert first["do_sample"] is False
    assert all(sampled(c) and c["top_k"] == 0 for c in rest)
    assert qwen.generate_kwargs == before


def test_qwen_candidate_failure_is_recorded_and_settings_restored(qwen):
    before = dict(qwen.generate_kwargs)
    qwen.model.fail_on = {1}
    out = get_adapter(qwen).sample(qwen, TEXT, None, 3, CFG)

    assert [s.ok for s in out] == [True, False, True]
    assert out[1].text is None and "RuntimeError" in out[1].error and "out of memory" in out[1].error
    assert out[1].settings["do_sample"] is True
    assert qwen.generate_kwargs == before


def test_qwen_lmdeploy_path_is_switched_to_sampling(qwen, fake_lmdeploy):
    pipe = FakePipeline()
    qwen.use_lmdeploy, qwen.model = True, pipe
    qwen.generate(TEXT)
    assert pipe.configs[0].do_sample is False  # what VLMEvalKit alone sends: greedy in lmdeploy

    out = get_adapter(qwen).sample(qwen, TEXT, None, 2, SamplingConfig(top_k=20, max_new_tokens=64))
    assert all(s.ok for s in out)
    for gen in pipe.configs[1:]:
        assert sampled(vars(gen)) and gen.top_k == 20 and gen.max_new_tokens == 64
    assert qwen.model is pipe


def test_qwen_vllm_is_refused(qwen):
    qwen.use_vllm = True
    with pytest.raises(UnsupportedPolicyError, match="vllm"):
        get_adapter(qwen)


def test_subclass_matches_along_mro(qwen):
    aguvis = vlmeval.vlm.Qwen2VLChatAguvis.__new__(vlmeval.vlm.Qwen2VLChatAguvis)
    aguvis.generate_kwargs = dict(qwen.generate_kwargs)
    assert get_adapter(aguvis).name == "qwen2_vl"


# -- LLaVA ----------------------------------------------------------------------------------------

def test_llava_next_kwargs_path(monkeypatch):
    inner = GenerateRecorder()
    patch_transformers(monkeypatch, LlavaNextProcessor=FakeProcessor("ASSISTANT: " + ANSWER),
                       LlavaNextForConditionalGeneration=inner)
    model = vlmeval.vlm.LLaVA_Next(model_path="llava-hf/llava-v1.6-vicuna-7b-hf")
    before = dict(model.kwargs)

    out = get_adapter(model).sample(model, TEXT, None, 2, CFG)
    assert [s.text for s in out] == [ANSWER, ANSWER]
    assert all(sampled(c) for c in inner.calls)
    assert model.kwargs == before and before["do_sample"] is False


def test_llava_onevision_hf_hardcoded_call_is_rewritten(monkeypatch):
    inner = GenerateRecorder()
    patch_transformers(monkeypatch, AutoProcessor=FakeProcessor(),
                       LlavaOnevisionForConditionalGeneration=inner)
    model = vlmeval.vlm.LLaVA_OneVision_HF(model_path="llava-hf/llava-onevision-qwen2-0.5b-ov-hf")

    out = get_adapter(model).sample(model, TEXT, "MathVista_MINI", 2, CFG, greedy_first=True)
    assert all(s.ok for s in out)
    assert inner.calls[0]["do_sample"] is False
    assert sampled(inner.calls[1]) and inner.calls[1]["max_new_tokens"] == 2048  # its own limit kept
    assert "generate" not in vars(model.model)


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


# -- API wrappers ---------------------------------------------------------------------------------

@pytest.fixture
def http(monkeypatch):
    """Replaces the HTTP layer; records each JSON payload. ``honour_n``: answer ``n`` choices."""
    payloads, status, honour_n = [], [200], [True]

    def post(url, headers=None, data=None, json=None, **kwargs):
        payload = json if json is not None else _json.loads(data)
        payloads.append(payload)
        n = payload.get("n", 1) if honour_n[0] else 1
        body = {"choices": [{"message": {"content": ANSWER}}] * n} if status[0] == 200 else {"message": "boom"}

        def raise_for_status():
            if status[0] >= 400:
                raise requests.HTTPError(f"HTTP {status[0]}")
        return SimpleNamespace(status_code=status[0], text=_json.dumps(body), json=lambda: body,
                               raise_for_status=raise_for_status)

    monkeypatch.setattr(requests, "post", post)  # VLMEvalKit's wrappers, one candidate per request
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
    assert [s.text for s in out] == [ANSWER] * 3
    sampled, greedy = http.payloads  # the two sampled candidates share ONE request (n=2)
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy and "n" not in greedy
    assert sampled["n"] == 2 and sampled["temperature"] == 0.7 and sampled["top_p"] == 0.95
    assert sampled["max_tokens"] == 512 and sampled["messages"] == model.prepare_inputs(
        model.preproc_content(TEXT))
    assert all("top_k" not in p and "dataset" not in p for p in http.payloads)
    assert model.temperature == 0 and model.default_kwargs == {}


def test_server_ignoring_n_falls_back_to_one_request_per_candidate(http, caplog):
    model = gpt4v()
    http.honour_n[0] = False
    out = get_adapter(model).sample(model, TEXT, None, 3, CFG)
    assert [s.text for s in out] == [ANSWER] * 3
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


def test_reasoning_model_that_drops_temperature_is_refused():
    model = gpt4v("gpt-5")
    with pytest.raises(UnsupportedPolicyError, match="gpt-5"):
        get_adapter(model)


def test_lmdeploy_api_sends_settings_per_request(http):
    model = vlmeval.api.LMDeployAPI(model="InternVL2_5-8B", api_base=URL, key="sk-test", retry=1,
                                    verbose=False)
    out = get_adapter(model).sample(model, TEXT, "MathVista_MINI", 2, SamplingConfig(top_k=20))
    assert all(s.ok for s in out) and len(out) == 2
    assert [p["n"] for p in http.payloads] == [2]
    for p in http.payloads:
        assert p["temperature"] == 0.7 and p["top_p"] == 0.95 and p["top_k"] == 20
        assert p["max_tokens"] == 16384 and "dataset" not in p  # the wrapper's own limit kept
    assert model.default_kwargs["temperature"] == 0.0


def test_lmdeploy_api_prompt_adapter_forcing_greedy_is_refused(http):
    model = vlmeval.api.LMDeployAPI(model="InternVL3-8B", api_base=URL, key="sk-test", retry=1, verbose=False,
                                    custom_prompt="internvl3")
    adapter = get_adapter(model)
    with pytest.raises(UnsupportedPolicyError, match="temperature"):
        adapter.sample(model, TEXT, "MMBench_DEV_EN", 2, CFG)
    assert http.payloads == []


# -- registry and config --------------------------------------------------------------------------

def test_unknown_family_raises_naming_its_class():
    model = vlmeval.vlm.Phi3Vision.__new__(vlmeval.vlm.Phi3Vision)
    with pytest.raises(UnsupportedPolicyError) as err:
        get_adapter(model)
    assert "Phi3Vision" in str(err.value) and "InternVLChat" in str(err.value)


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
    assert {"InternVLChat", "Qwen2VLChat", "LLaVA_OneVision", "MiniCPM_V_2_6", "OpenAIWrapper"} <= set(
        supported_families())


@pytest.mark.parametrize("kwargs", [{"temperature": 0}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": 1},
                                    {"max_new_tokens": 0}])
def test_config_rejects_settings_that_are_not_sampling(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)


def test_config_record():
    assert SamplingConfig(top_k=40).to_record() == {"temperature": 0.7, "top_p": 0.95, "top_k": 40,
                                                    "max_new_tokens": None, "first_greedy": False}


def test_one_by_one_candidates_are_handed_over_as_they_exist(http):
    """BestOfN stores each candidate before the next call, so a kill loses at most one call."""
    model = gpt4v()
    model._vlmeval_prm_no_n = True  # a server that refused n: one request per candidate
    seen = []
    get_adapter(model).sample(model, TEXT, None, 3, CFG, on_sample=lambda i, s: seen.append((i, len(http.payloads))))
    assert seen == [(0, 1), (1, 2), (2, 3)]
