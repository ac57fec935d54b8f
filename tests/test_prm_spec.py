"""A PRM spec is checked when the Best-of-N model (or the PRM judge) is built, before any sampling:
a bad one is an immediate error naming it; a server that does not answer yet is a logged wait."""

import logging
import socket
import time

import pytest

from vlmeval_prm.prm import validate_spec


def closed_port_url():
    with socket.socket() as sock:  # bound, then released: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("lmdepoly:http://127.0.0.1:23333", "unknown PRM backend 'lmdepoly'"),
        ("http://127.0.0.1:23333", "names no backend: use lmdeploy:http://127.0.0.1:23333 or vllm:http"),
        ("transformers:/models/does-not-exist/VisualPRM-8B", "no such checkpoint directory"),
        ("/models/does-not-exist/VisualPRM-8B", "no such checkpoint directory"),
        ("transformers:tiny:prn", "no tiny model 'prn'"),
        ("lmdeploy:127.0.0.1:23333", "is not an http(s)://host[:port] URL"),
        ("lmdeploy:http://a:23333,http://b:port", "'http://b:port'"),
        ("lmdeploy:", "no server URL"),
    ],
)
def test_a_bad_spec_is_an_immediate_error_naming_it(spec, message):
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        validate_spec(spec)
    assert f"PRM spec {spec!r}" in str(err.value) and message in str(err.value)
    assert time.monotonic() - start < 2


def test_a_checkpoint_dir_without_config_and_an_uncached_hub_id_offline(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="has no config.json"):
        validate_spec(f"transformers:{tmp_path}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="neither a local directory nor in the hub cache"):
        validate_spec("transformers:OpenGVLab/VisualPRM-8B")


def test_unknown_options_are_named(tiny_paths):
    with pytest.raises(ValueError, match=r"takes no option 'batchsize'.*batch_size"):
        validate_spec(f"transformers:{tiny_paths['prm']}", {"batchsize": 4})
    with pytest.raises(ValueError, match="takes no option 'chat_markers'"):
        validate_spec("lmdeploy:http://127.0.0.1:1", {"chat_markers": {}})
    validate_spec(f"transformers:{tiny_paths['prm']}", {"batch_size": 4, "max_num": 6})


def test_an_unreachable_server_is_a_logged_wait_not_a_crash(caplog):
    caplog.set_level(logging.INFO)
    url = closed_port_url()
    validate_spec(f"lmdeploy:{url}", {"startup_timeout": 900})
    assert f"PRM server {url} does not answer yet" in caplog.text and "wait up to 900s" in caplog.text


def test_best_of_n_checks_the_spec_before_building_anything(monkeypatch):
    from vlmeval_prm.host.bon import BestOfN

    built = []
    monkeypatch.setattr("vlmeval_prm.host.bon.build_base", lambda *a, **k: built.append(a))
    with pytest.raises(ValueError, match=r"PRM spec 'transformers:/nowhere/VisualPRM-8B'"):
        BestOfN(model="any", prm="transformers:/nowhere/VisualPRM-8B")
    with pytest.raises(ValueError, match="unknown PRM backend 'lmdepoly'"):
        BestOfN(model="any", prm="lmdepoly:http://127.0.0.1:23333")
    assert built == []  # nothing was built, nothing sampled


def test_prm_judge_checks_the_spec_first():
    from vlmeval_prm.host.prm_judge import PRMJudge

    with pytest.raises(ValueError, match=r"PRM spec 'transformers:/nowhere/x'.*no such checkpoint directory"):
        PRMJudge(prm="transformers:/nowhere/x")


def test_option_values_that_would_fail_later_fail_now():
    url = closed_port_url()
    with pytest.raises(ValueError, match="mode must be one of"):
        validate_spec(f"lmdeploy:{url}", {"mode": "generation"})
    with pytest.raises(ValueError, match="unknown PRM chat template 'chatml'"):
        validate_spec(f"lmdeploy:{url}", {"template": "chatml"})
