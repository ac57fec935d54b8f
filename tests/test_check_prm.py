"""``vlmeval-prm check-prm``: one PASS/FAIL line per check, versions, a verdict and its exit code.

Driven through the CLI entry (``vlmeval_prm.host.cli.main``) against the tiny PRM in-process, and against
LMDeploy's own api_server app around the CPU stand-in engine (``standins.lmdeploy_standin``) serving it
with and without the PRM's chat template. The remote-code buffer check runs on the InternLM2-style
stand-in for VisualPRM-8B (``standins.internlm2_remote``: RoPE buffers that transformers 5.x leaves
uninitialised) with the project's own repair (``vlmeval_prm.remote_code``).
"""

import json
import re
import socket
import subprocess
import sys
import time

import pytest

from vlmeval_prm.host.check_prm import CHECKS, TITLES
from vlmeval_prm.host.cli import main

KEY = "sk-check-prm-secret-0451"


def check_lines(out: str) -> dict[str, tuple[str, str]]:
    """title -> (status, reason) of every check line."""
    lines = {}
    for line in out.splitlines():
        m = re.match(r"^(PASS|FAIL|SKIP)  (.{19})  (.*)$", line)
        if m:
            lines[m.group(2).strip()] = (m.group(1), m.group(3))
    return lines


def run_cli(capsys, *argv):
    rc = main(["check-prm", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_all_pass(out: str, load_title: str = "load") -> dict:
    lines = check_lines(out)
    titles = [load_title if n == "load" else TITLES[n] for n in CHECKS]
    assert list(lines) == titles, out
    assert all(status == "PASS" for status, _ in lines.values()), out
    assert re.search(r"^versions: vlmeval-prm \S+, python \S+, transformers \S+, torch \S+, vlmeval", out, re.M), out
    assert out.rstrip().splitlines()[-1].startswith("verdict: PASS"), out
    return lines


# -- in-process -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["tiny:prm", "transformers:tiny:prm"])
def test_the_tiny_prm_passes_in_process(tiny_paths, capsys, spec):
    rc, out, _ = run_cli(capsys, spec)
    assert rc == 0, out
    lines = assert_all_pass(out)
    assert "one token each and distinct" in lines["label tokens"][1]
    assert "not applicable" in lines["remote-code buffers"][1]
    scores = [float(x) for x in re.findall(r"\d\.\d{4}", lines["one score"][1])]
    assert len(scores) == 3 and all(0 <= s <= 1 for s in scores)
    assert re.search(r"^probe prompt \(.*; \d+ tokens\), head:$", out, re.M)
    assert "### Question:" in out and "<|im_start|>assistant" in out


# -- bad input: exit 2 before anything is loaded ------------------------------------------------------


def test_an_unknown_option_is_bad_input(capsys):
    start = time.monotonic()
    rc, out, _ = run_cli(capsys, "transformers:tiny:prm", "--options", '{"nope": 1}')
    assert rc == 2 and time.monotonic() - start < 5
    status, reason = check_lines(out)["spec and options"]
    assert status == "FAIL" and "takes no option 'nope'" in reason
    assert "verdict: FAIL" in out and "load" not in check_lines(out)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tiny:prm", "--options", "{nope"], "--options is not valid JSON"),
        (["tiny:prm", "--options", "[1, 2]"], "--options must be a JSON object"),
        (["lmdeploy:http://127.0.0.1:9", "--timeout", "0"], "--timeout must be a positive number"),
    ],
)
def test_bad_json_or_timeout_is_bad_input(capsys, argv, message):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and message in err and not out


def test_a_malformed_spec_is_bad_input(capsys):
    rc, out, _ = run_cli(capsys, "lmdeploy:localhost:23333")
    assert rc == 2 and "is not an http(s)://host[:port] URL" in check_lines(out)["spec and options"][1]
    rc, out, _ = run_cli(capsys, "nosuch:thing")
    assert rc == 2 and "unknown PRM backend 'nosuch'" in out


def test_the_module_entry_point_exits_2_on_bad_json():
    proc = subprocess.run(
        [sys.executable, "-m", "vlmeval_prm.host.cli", "check-prm", "tiny:prm", "--options", "{bad"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--options is not valid JSON" in proc.stderr


# -- served: LMDeploy's api_server around the CPU stand-in engine ---------------------------------------

try:
    from standins import lmdeploy_standin
except ImportError:  # lmdeploy's server code is not installed: the in-process checks still run
    lmdeploy_standin = None
needs_lmdeploy = pytest.mark.skipif(lmdeploy_standin is None, reason="needs lmdeploy's api_server code")


@pytest.fixture(scope="module")
def checkpoints(tiny_paths, tmp_path_factory):
    """The tiny PRM with its labels on top (as a trained PRM has them), with and without its chat template."""
    root = tmp_path_factory.mktemp("check_prm")
    labelled = lmdeploy_standin.label_boosted_copy(tiny_paths["prm"], str(root / "labelled"), {"+": 8.0, "-": 8.0})
    bare = lmdeploy_standin.without_chat_template(labelled, str(root / "no-template"))
    return labelled, bare


@pytest.fixture(scope="module")
def server(checkpoints):
    """The PRM served with its chat template, behind an API key."""
    with lmdeploy_standin.serve_standin(checkpoints[0], model_name="tiny-prm", api_keys=[KEY]) as server:
        yield server


@needs_lmdeploy
@pytest.mark.parametrize("mode", ["generate", "chat"])
def test_a_served_prm_passes_in_both_modes(server, capsys, monkeypatch, mode):
    monkeypatch.setenv("LMDEPLOY_API_KEY", KEY)
    argv = [f"lmdeploy:{server.url}"] + (["--options", json.dumps({"mode": mode})] if mode == "chat" else [])
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 0, out
    lines = assert_all_pass(out, load_title="servers")
    assert f"mode {mode}" in lines["servers"][1]
    template = lines["chat template"][1]
    assert ("not applicable" in template) == (mode == "generate")
    assert f"{server.url} /v1/models: 'tiny-prm'" in out
    assert KEY not in out + err


@needs_lmdeploy
def test_the_api_key_option_is_never_printed(server, capsys, monkeypatch):
    monkeypatch.delenv("LMDEPLOY_API_KEY", raising=False)
    rc, out, err = run_cli(capsys, f"lmdeploy:{server.url}", "--options", json.dumps({"api_key": KEY}))
    assert rc == 0, out
    assert KEY not in out + err and '"api_key": "***"' in out


@needs_lmdeploy
def test_a_wrong_api_key_fails_with_the_servers_reason(server, capsys, monkeypatch):
    monkeypatch.setenv("LMDEPLOY_API_KEY", "wrong-key-7781")
    rc, out, err = run_cli(capsys, f"lmdeploy:{server.url}", "--timeout", "5")
    assert rc == 1
    status, reason = check_lines(out)["servers"]
    assert status == "FAIL" and "401" in reason and "api_key" in reason
    assert "wrong-key-7781" not in out + err


@needs_lmdeploy
@pytest.mark.parametrize("engine, options", [("pytorch", ["--options", '{"mode": "chat"}']), ("turbomind", [])])
def test_a_server_without_the_prms_chat_template_fails_in_chat_mode(checkpoints, capsys, engine, options):
    """TurboMind gives no prompt logprobs, so the client falls back to chat mode by itself."""
    with lmdeploy_standin.serve_standin(checkpoints[1], model_name="tiny-prm", engine=engine) as server:
        rc, out, _ = run_cli(capsys, f"lmdeploy:{server.url}", *options)
    assert rc == 1, out
    lines = check_lines(out)
    status, reason = lines["chat template"]
    assert status == "FAIL" and "does not use the PRM's chat template" in reason and "'base' template" in reason
    assert lines["one score"][0] == "SKIP" and lines["spec and options"][0] == lines["servers"][0] == "PASS"
    assert out.rstrip().splitlines()[-1].startswith("verdict: FAIL - 1 check(s) failed (chat template)")


@needs_lmdeploy
def test_the_same_server_without_its_template_passes_in_generate_mode(checkpoints, capsys):
    with lmdeploy_standin.serve_standin(checkpoints[1], model_name="tiny-prm") as server:
        rc, out, _ = run_cli(capsys, f"lmdeploy:{server.url}")
    assert rc == 0, out
    assert_all_pass(out, load_title="servers")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_fails_within_the_timeout(capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    rc, out, _ = run_cli(capsys, f"lmdeploy:{url}", "--timeout", "1")
    assert rc == 1 and time.monotonic() - start < 15, out
    status, reason = check_lines(out)["servers"]
    assert status == "FAIL" and url in reason and "not healthy after 1s" in reason
    assert check_lines(out)["one score"][0] == "SKIP"
    assert "verdict: FAIL" in out


@needs_lmdeploy
def test_one_server_of_two_down_is_a_failure(server, capsys, monkeypatch):
    monkeypatch.setenv("LMDEPLOY_API_KEY", KEY)
    down = f"http://127.0.0.1:{_closed_port()}"
    rc, out, _ = run_cli(capsys, f"lmdeploy:{server.url},{down}", "--timeout", "1")
    assert rc == 1, out
    status, reason = check_lines(out)["servers"]
    assert status == "FAIL" and "1 of 2 servers ready" in reason and down in reason
    assert check_lines(out)["one score"][0] == "PASS"


# -- the InternLM2-style stand-in for VisualPRM-8B, with the project's own buffer check ------------------


@pytest.fixture(scope="module")
def internlm2_remote(tmp_path_factory):
    """``standins.internlm2_remote``: InternLM2's non-persistent RoPE buffers, remote ``_init_weights``."""
    return pytest.importorskip("standins.internlm2_remote")


def test_an_internlm2_remote_code_prm_passes_with_its_buffers_verified(internlm2_remote, tmp_path, capsys):
    """On transformers 5.x loading must repair the RoPE buffers, else this check fails and names them."""
    checkpoint = internlm2_remote.write_checkpoint(tmp_path / "visualprm-standin")
    rc, out, _ = run_cli(capsys, f"transformers:{checkpoint}")
    assert rc == 0, out
    lines = assert_all_pass(out)
    reason = lines["remote-code buffers"][1]
    assert "(verified)" in reason and "inv_freq" in reason and "cos_cached" in reason


def test_an_internlm2_buffer_that_cannot_be_verified_fails(internlm2_remote, tmp_path, capsys):
    checkpoint = internlm2_remote.write_checkpoint(tmp_path / "unverifiable", unreproducible_buffer=True)
    rc, out, _ = run_cli(capsys, f"transformers:{checkpoint}")
    assert rc == 1, out
    status, reason = check_lines(out)["remote-code buffers"]
    assert status == "FAIL" and "jitter" in reason and "transformers" in reason
    assert "remote-code buffers" in out.rstrip().splitlines()[-1]


def test_a_loader_that_leaves_the_buffers_wrong_fails_and_names_them(internlm2_remote, tmp_path, capsys, monkeypatch):
    """As transformers 5.x leaves them without the repair (uninitialised memory), on any transformers line:
    the loader's call of ``repair_buffers`` is replaced by one that spoils them; the check's own finds them."""
    from vlmeval_prm import remote_code

    real, calls = remote_code.repair_buffers, []

    def spoiled_at_load(model, checkpoint):  # the first call is the loader's
        calls.append(checkpoint)
        if len(calls) > 1:
            return real(model, checkpoint)
        for module in model.modules():
            for name in module._non_persistent_buffers_set:
                module._buffers[name].fill_(6.6e35)
        return []

    monkeypatch.setattr(remote_code, "repair_buffers", spoiled_at_load)
    checkpoint = internlm2_remote.write_checkpoint(tmp_path / "old-loader")
    rc, out, _ = run_cli(capsys, f"transformers:{checkpoint}")
    assert rc == 1 and len(calls) == 2, out
    status, reason = check_lines(out)["remote-code buffers"]
    assert status == "FAIL" and "loading left 6 non-persistent buffer(s) wrong" in reason and "inv_freq" in reason
    assert check_lines(out)["one score"][0] == "PASS"  # scored after the check's own repair
