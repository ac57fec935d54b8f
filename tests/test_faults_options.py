"""D4: ``VLMEVAL_PRM_OPTIONS`` is checked at registration. A bad value names the variable, lists the
unknown or reserved keys and the valid ones, and never stops VLMEvalKit's import: every -BoN<N> name
is still registered and building one raises that error before any model is built."""

import inspect
import json
import logging
from functools import partial

import pytest

from vlmeval_prm.constants import OPTIONS_ENV
from vlmeval_prm.host import plugin


class Base:
    """A supported_VLM entry that records being built: Best-of-N must fail before it."""

    built = 0

    def __call__(self, **kwargs):
        Base.built += 1
        raise AssertionError("the base model was built")


def register(monkeypatch, caplog, raw):
    monkeypatch.setenv(OPTIONS_ENV, raw)
    table = {"SomeVLM": Base(), "VisualPRM-8B": plugin.PRM_MODELS["VisualPRM-8B"]}
    with caplog.at_level(logging.ERROR, logger="vlmeval.vlmeval_prm"):
        plugin.register_bon(table)
    return table


def build_error(table) -> str:
    Base.built = 0
    with pytest.raises(plugin.OptionsError) as info:
        table["SomeVLM-BoN4"]()
    assert Base.built == 0
    return str(info.value)


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("{not json", ["is not valid JSON"]),
        ("[1, 2]", ["must be a JSON object", "list"]),
        ('{"temprature": 1}', ["unknown key 'temprature'", "did you mean 'temperature'?"]),
        ('{"n": 3, "name": "x"}', ["'n' is the N of the name", "'name' is the registered name"]),
        ('{"prm": "lmdeploy:http://h:1"}', ["'prm' is set by VLMEVAL_PRM_SPEC"]),
        ('{"model": "Other", "temperature": 1.0}', ["'model' is the name's base model"]),
    ],
)
def test_bad_options_refuse_to_build_naming_the_variable(monkeypatch, caplog, raw, expected):
    table = register(monkeypatch, caplog, raw)
    assert all(f"SomeVLM-BoN{n}" in table for n in plugin.BON_SIZES)  # registration went through
    assert "VisualPRM-8B-BoN4" not in table
    message = build_error(table)
    assert message.startswith(OPTIONS_ENV)
    for part in expected:
        assert part in message
    if raw.startswith("{") and raw != "{not json":
        assert "Valid keys: " + ", ".join(plugin.BON_OPTIONS) in message
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and OPTIONS_ENV in errors[0].getMessage()  # once, not once per name


def test_the_error_never_echoes_the_value(monkeypatch, caplog):
    """prm_options may hold an API key."""
    table = register(monkeypatch, caplog, json.dumps({"prm_options": {"api_key": "sk-secret-42"}, "bogus": 1}))
    message = build_error(table)
    assert "unknown key 'bogus'" in message
    assert "sk-secret-42" not in message and "sk-secret-42" not in caplog.text


def test_valid_options_reach_best_of_n(monkeypatch, caplog):
    table = register(monkeypatch, caplog, '{"temperature": 1.0, "retry_failed": true, "prm_options": {"x": 1}}')
    factory = table["SomeVLM-BoN8"]
    assert isinstance(factory, partial) and factory.func is plugin.BestOfN
    assert factory.keywords == {
        "model": "SomeVLM",
        "n": 8,
        "name": "SomeVLM-BoN8",
        "temperature": 1.0,
        "retry_failed": True,
        "prm_options": {"x": 1},
    }
    assert not caplog.records


def test_option_keys_are_exactly_best_of_ns_own_keywords():
    from vlmeval_prm.host.bon import BestOfN

    params = inspect.signature(BestOfN.__init__).parameters.values()
    named = {p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name != "self"}
    assert set(plugin.BON_OPTIONS) | set(plugin.RESERVED_OPTIONS) == named
    assert not set(plugin.BON_OPTIONS) & set(plugin.RESERVED_OPTIONS)
