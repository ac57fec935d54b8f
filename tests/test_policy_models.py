"""``vlmeval-prm models [--json]``: every supported_VLM name with its class and sampling route, taken
from the adapter registry; the route is checked against the adapter's verdict on built models."""

import functools
import json

import pytest
import vlmeval.api
import vlmeval.vlm
from vlmeval.config import supported_VLM

from vlmeval_prm.host.cli import main
from vlmeval_prm.policy import get_adapter, route_of
from vlmeval_prm.policy.base import ROUTES
from vlmeval_prm.policy.catalog import factory_spec

OTHER_PLUGIN = "OtherPlugin-Qwen2-VL-Tiny"
#: API classes that VLMEvalKit builds offline (no key check, no network in __init__).
OFFLINE_API = {
    "GPT4V",
    "CustomAPIModel",
    "Claude3V",
    "KimiVLAPI",
    "LMDeployAPI",
    "SiliconFlowAPI",
    "TeleMMAPI",
    "TeleMM2_API",
    "JTVLChatAPI",
    "JTVLChatAPI_Mini",
    "JTVLChatAPI_2B",
    "VideoChatOnlineV2API",
}


@pytest.fixture(scope="module")
def rows():
    """The JSON listing, with one name added the way another plugin would add it."""
    supported_VLM[OTHER_PLUGIN] = functools.partial(vlmeval.vlm.Qwen2VLChat, model_path="/nowhere/tiny")
    try:
        with pytest.MonkeyPatch.context():
            import contextlib
            import io

            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert main(["models", "--json"]) == 0
        return {r["name"]: r for r in json.loads(out.getvalue())}
    finally:
        supported_VLM.pop(OTHER_PLUGIN)


def test_every_name_is_listed_with_the_documented_keys(rows):
    derived = {n for n, f in supported_VLM.items() if factory_spec(f).cls.__name__ in ("BestOfN", "PRMSearch")}
    assert set(rows) == (set(supported_VLM) | {OTHER_PLUGIN}) - derived
    assert len(rows) >= 540
    for row in rows.values():
        keys = {*list(row)[:4], "transformers", "search"}
        assert list(row)[:4] == ["name", "class", "route", "reason"] and set(row) <= keys
        assert row["route"] in ROUTES and row["reason"] and row["search"]
    # search needs generation from a prefix: the plugin's own TransformersChat, or GPT4V on a vLLM server
    assert rows["GPT4o"]["search"] == "beam, best_of_n, dvts"  # served: a vLLM server continues the prefix
    assert "cannot continue a partial answer" in rows[OTHER_PLUGIN]["search"]
    assert rows[OTHER_PLUGIN]["class"] == "Qwen2VLChat" and rows[OTHER_PLUGIN]["route"] == "batched"


def test_at_least_ninety_percent_can_sample(rows):
    can = [r for r in rows.values() if r["route"] != "unsupported"]
    assert len(can) / len(rows) >= 0.90, f"{len(can)} of {len(rows)}"


def test_the_required_families_are_batched(rows):
    by_class: dict[str, set] = {}
    for r in rows.values():
        if "omni checkpoint" not in r["reason"]:  # Qwen-Omni's generate returns (text, audio): one per call
            by_class.setdefault(r["class"], set()).add(r["route"])
    for cls in ("Qwen2VLChat", "Qwen3VLChat", "LLaVA_OneVision_HF"):
        assert by_class[cls] == {"batched"}, cls
    omni = [r for r in rows.values() if "omni checkpoint" in r["reason"]]
    assert all("omni" in r["name"].lower() and r["route"] == "sequential" for r in omni)
    internvl = {r["name"]: r["route"] for r in rows.values() if r["class"] == "InternVLChat"}
    assert {n for n, route in internvl.items() if route != "batched"} == {"InternVL2_5-8B-BoN-8"}
    assert "best_of_n=8" in rows["InternVL2_5-8B-BoN-8"]["reason"]  # VLMEvalKit's own BoN: refused
    # the uncovered families, and the GPT o-series (no temperature)
    for name in (
        "PaliGemma-3B-mix-448",
        "Claude3.5V-Sonnet",
        "SAIL-VL-2B",
        "Eagle-X5-7B",
        "GeminiPro2-5",
        "SmolVLM",
        "Ovis2-8B",
        "Vertex-Gemini-2.5-Pro",
        "Doubao-1.5-Vision-Pro",
    ):
        if name in rows:
            assert rows[name]["route"] != "unsupported", rows[name]
    o_series = [r for r in rows.values() if r["class"] == "GPT4V" and "no temperature" in r["reason"]]
    assert o_series and all(r["route"] == "api-n" for r in o_series)


def test_listed_route_is_the_route_of_the_built_model(rows):
    """What ``models`` says is what BestOfN's adapter decides on the model it builds."""
    checked = 0
    for name, row in rows.items():
        if row["class"] not in OFFLINE_API:
            continue
        try:
            model = supported_VLM[name]()
        except AssertionError:  # an entry that needs an environment variable (e.g. LMDEPLOY_API_BASE)
            continue
        _, built = route_of(model)
        assert (built.route, built.reason) == (row["route"], row["reason"]), name
        if built.route != "unsupported":
            assert get_adapter(model) is not None
        checked += 1
    assert checked >= 70


def test_gpt4v_has_no_use_custom_prompt_and_best_of_n_copes(monkeypatch):
    """The ms-vlmeval 0.0.20 gap behind the API crash, and BestOfN's delegation around it."""
    from vlmeval_prm.host.bon import BestOfN

    assert not hasattr(vlmeval.api.GPT4V, "use_custom_prompt")
    bon = BestOfN(
        {"class": "GPT4V", "model": "gpt-4o-mini", "key": "sk-x", "api_base": "http://127.0.0.1:9/v1"},
        n=2,
        prm="transformers:tiny:prm",
    )
    assert bon.use_custom_prompt("MMBench_DEV_EN") is False


def test_use_vllm_lists_the_routes_of_vlmeval_run_use_vllm(capsys):
    """``vlmeval.run --use-vllm`` builds Qwen2-VL/Qwen2.5-VL names with use_vllm (inference.py): batched with n."""
    assert main(["models", "--json", "--use-vllm"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert (
        rows["Qwen2.5-VL-7B-Instruct"]["route"] == "batched"
        and "SamplingParams(n=N)" in rows["Qwen2.5-VL-7B-Instruct"]["reason"]
    )
    assert "num_return_sequences" in rows["InternVL2_5-8B"]["reason"]  # names VLMEvalKit does not switch
