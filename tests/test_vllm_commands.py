"""The ``vllm serve`` commands of the documentation: one for each format served on vLLM, parsed by vLLM's own
CLI parser where vLLM imports (it has no CPU build here: on this machine and in CI that part is skipped; on a
machine with vLLM it runs)."""

import shlex

import pytest

from docs import doc_text
from vlmeval_prm.prm.formats import FORMATS, format_class


def vllm_commands() -> list[list[str]]:
    lines = doc_text().replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith("vllm serve ")]


def test_every_format_served_on_vllm_has_a_documented_command():
    models = {argv[2] for argv in vllm_commands()}
    on_vllm = [name for name in FORMATS if "vllm" in format_class(name).backends]
    assert sorted(on_vllm) == ["qwen-math-prm", "vl-prm"]
    assert {"Qwen/Qwen2.5-Math-PRM-7B", "ob11/Qwen-VL-PRM-7B"} <= models


def test_every_documented_command_parses_with_vllms_cli():
    pytest.importorskip("vllm", reason="vLLM has no CPU build to install here")
    from vllm.entrypoints.cli.serve import ServeSubcommand

    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older vLLM
        from vllm.utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))  # what `vllm` builds
    for argv in vllm_commands():
        args = parser.parse_args(argv[1:])
        assert args.model_tag == argv[2]
