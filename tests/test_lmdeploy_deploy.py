"""The documented LMDeploy deployments (README and docs/) work as written.

* Every ``lmdeploy serve ...`` command in the documentation is parsed by LMDeploy 0.18's own CLI parser
  (``lmdeploy.cli``): a wrong flag fails here. Remote-code checkpoints get ``--trust-remote-code``.
* The chat fallback refuses a server whose chat template is not the PRM's (LMDeploy's silent
  ``base`` fallback for a checkpoint without one), and the README's ``--chat-template`` JSON fixes it.
* The PRM spec pointed at ``lmdeploy serve proxy`` (LMDeploy's own proxy app) is a clear error.

The servers are LMDeploy's own apps; only the GPU engine is replaced by the CPU stand-in.
"""

import json
import logging
import os
import shlex
import shutil

import pytest
from PIL import Image

pytest.importorskip("lmdeploy")

from docs import doc_text  # noqa: E402
from standins.lmdeploy_standin import Faults, StandinServer, Stats, label_boosted_copy, serve_standin  # noqa: E402
from vlmeval_prm.prm.hf_backend import TransformersPRM  # noqa: E402
from vlmeval_prm.prm.lmdeploy_backend import LMDeployPRM  # noqa: E402
from vlmeval_prm.tiny import ATTN_IMPLEMENTATION  # noqa: E402

REMOTE_CODE = ("OpenGVLab/VisualPRM-8B", "OpenGVLab/InternVL2_5-8B")  # InternVLChatModel checkpoints


def readme_blocks(lang=None):
    """The documentation's fenced code blocks (of language ``lang`` only, when given)."""
    blocks, current, current_lang = [], None, None
    for line in doc_text().splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, current_lang = [], line[3:].strip()
            else:
                if lang is None or current_lang == lang:
                    blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def readme_lmdeploy_commands():
    """Each `lmdeploy serve` command of the README's code blocks, continuation lines joined."""
    commands = []
    for block in readme_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("lmdeploy serve"):
                commands.append(shlex.split(line, comments=True))
    return commands


@pytest.fixture(scope="module")
def lmdeploy_parser():
    from lmdeploy.cli.cli import CLI
    from lmdeploy.cli.serve import SubCliServe

    CLI.add_parsers()  # what `lmdeploy` (lmdeploy.cli.entrypoint.run) builds
    SubCliServe.add_parsers()
    return CLI.parser


def test_every_readme_lmdeploy_command_parses_with_lmdeploys_cli(lmdeploy_parser):
    commands = readme_lmdeploy_commands()
    assert len(commands) >= 9
    kinds, models = set(), set()
    for argv in commands:
        args = lmdeploy_parser.parse_args(argv[1:])
        kinds.add(argv[2])
        if argv[2] == "api_server":
            models.add(args.model_path)
            assert args.trust_remote_code or args.model_path not in REMOTE_CODE, argv
            if args.model_path == "OpenGVLab/VisualPRM-8B" and args.backend == "pytorch":
                assert args.logprobs_mode == "raw_logprobs", argv
    assert kinds == {"api_server", "proxy"} and set(REMOTE_CODE) <= models


def test_the_parser_refuses_a_wrong_flag(lmdeploy_parser, capsys):
    with pytest.raises(SystemExit):
        lmdeploy_parser.parse_args(["serve", "api_server", "OpenGVLab/VisualPRM-8B", "--logprob-mode", "raw_logprobs"])
    assert "unrecognized arguments: --logprob-mode" in capsys.readouterr().err


# -- the chat-template check ---------------------------------------------------------------------

QUESTION = "What is the area of the square?"
CANDIDATES = [["The side is 3.", "So the area is 9."], ["The side is 4.", "The area is 16.", "Answer: 16"]]


@pytest.fixture(scope="module")
def checkpoints(tiny_paths, tmp_path_factory):
    """The tiny PRM with its labels on top, with and without its chat template."""
    root = tmp_path_factory.mktemp("ckpt")
    labelled = label_boosted_copy(tiny_paths["prm"], str(root / "labelled"), {"+": 8.0, "-": 8.0})
    bare = root / "no-template"
    shutil.copytree(labelled, bare)
    os.remove(bare / "chat_template.jinja")
    return labelled, str(bare)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "square.png"
    Image.new("RGB", (64, 64), (0, 90, 0)).save(path)
    return str(path)


def test_chat_mode_refuses_a_server_without_the_prms_chat_template(checkpoints, caplog):
    _, bare = checkpoints
    with serve_standin(bare, model_name="prm") as server:
        with pytest.raises(ValueError) as err:
            LMDeployPRM(server.url, mode="chat")
    message = str(err.value)
    assert server.url in message and "'base' template" in message and "--chat-template" in message


def test_the_readme_chat_template_json_makes_the_server_render_as_the_prm(checkpoints, image, tmp_path):
    labelled, bare = checkpoints
    (block,) = [b for b in readme_blocks("json") if '"internvl2_5"' in b]
    template = tmp_path / "internvl2_5.json"
    template.write_text(block)
    json.loads(block)
    reference = TransformersPRM(labelled, attn_implementation=ATTN_IMPLEMENTATION).score(QUESTION, [image], CANDIDATES)
    with serve_standin(bare, model_name="prm", chat_template=str(template)) as server:
        prm = LMDeployPRM(server.url, mode="chat")  # the start-up check passes
        try:
            got = prm.score(QUESTION, [image], CANDIDATES)
        finally:
            prm.close()
    for ref, res in zip(reference, got):
        assert res.ok and res.bounds is None
        assert res.scores == pytest.approx(ref.scores, abs=1e-4)


def test_generate_mode_needs_no_server_template(checkpoints, image):
    """/generate prompts are rendered by the plugin, so a template-less checkpoint scores the same."""
    labelled, bare = checkpoints
    reference = TransformersPRM(labelled, attn_implementation=ATTN_IMPLEMENTATION).score(QUESTION, [image], CANDIDATES)
    with serve_standin(bare, model_name="prm") as server:
        prm = LMDeployPRM(server.url)
        try:
            assert prm.mode == "generate"
            got = prm.score(QUESTION, [image], CANDIDATES)
        finally:
            prm.close()
    for ref, res in zip(reference, got):
        assert res.scores == pytest.approx(ref.scores, abs=1e-4)


# -- the proxy -------------------------------------------------------------------------------------


def test_a_prm_spec_pointing_at_lmdeploys_proxy_is_a_clear_error(caplog):
    pytest.importorskip("aiohttp")
    from lmdeploy.serve.proxy import proxy

    caplog.set_level(logging.INFO)
    server = StandinServer(proxy.app, Faults(), Stats()).start()
    try:
        with pytest.raises(RuntimeError) as err:
            LMDeployPRM(server.url, startup_timeout=60)
    finally:
        server.stop()
    message = str(err.value)
    assert "has no /health route" in message and "lmdeploy serve proxy" in message
    assert "lmdeploy:http://a:23333,http://b:23333" in message
