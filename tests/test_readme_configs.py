"""Every ``--config`` example in the README goes through VLMEvalKit's own config handling.

``"data": {"MathVista_MINI": {}}`` used to be the README's example: ms-vlmeval's (and upstream's)
``build_dataset_from_config`` reads an empty entry as a *video* dataset name and fails, and run.py
logs the error and exits 0. Here each JSON block is loaded with ``vlmeval.smp.load`` (what run.py
does with ``--config``), each data entry is built by run.py's ``build_dataset_from_config`` (only the
dataset's download is skipped: there is no network here), and each model entry is checked the way
``build_model_from_config`` would build it, short of loading weights.
"""

import functools
import inspect
import json
import re

import pytest

from docs import doc_text

FENCED_JSON = re.compile(r"```json\n(.*?)```", re.S)
HEREDOC_JSON = re.compile(r"<<'?JSON'?\n(.*?)\nJSON\n", re.S)


def readme_configs() -> list[str]:
    text = doc_text()
    blocks = FENCED_JSON.findall(text) + HEREDOC_JSON.findall(text)
    return [b for b in blocks if {"model", "data"} <= set(json.loads(b))]


CONFIGS = readme_configs()


def test_the_readme_has_config_examples():
    assert len(CONFIGS) >= 2


@pytest.fixture(params=range(len(CONFIGS)), ids=lambda i: f"config{i}")
def config(request, tmp_path):
    from vlmeval.smp import load

    path = tmp_path / "config.json"
    path.write_text(CONFIGS[request.param], encoding="utf-8")
    return load(str(path))


def without_download(cls):
    """``cls`` with its constructor's signature, minus what it does: download and load the data."""

    @functools.wraps(cls.__init__)
    def init(self, *args, **kwargs):
        self.kwargs = kwargs

    return type(cls.__name__, (cls,), {"__init__": init})


def test_every_data_entry_builds_with_vlmevalkits_own_parser(config, monkeypatch):
    import vlmeval.dataset
    from commands import HOST

    build_dataset_from_config = HOST.load().build_dataset_from_config

    for name, entry in config["data"].items():
        real = getattr(vlmeval.dataset, entry.get("class", ""), None)
        if real is not None:
            monkeypatch.setattr(vlmeval.dataset, entry["class"], without_download(real))
        dataset = build_dataset_from_config(config["data"], name)  # an entry without "class" fails here
        assert real is not None and isinstance(dataset, real)
        assert dataset.kwargs.get("dataset") == name and name in real.supported_datasets()


def test_every_model_entry_binds_to_its_classes(config):
    import vlmeval.api
    import vlmeval.vlm
    from vlmeval.config import supported_VLM

    from vlmeval_prm.host.bon import BestOfN
    from vlmeval_prm.policy import SamplingConfig
    from vlmeval_prm.prm import validate_spec

    for name, entry in config["model"].items():
        entry = dict(entry)
        cls = entry.pop("class")
        assert cls in ("BestOfN", "PRMJudge", "PRMSearch") and hasattr(vlmeval.vlm, cls)  # registered by the plugin
        if cls == "PRMSearch":  # search: its method and sizes, its base a model the plugin can extend
            from vlmeval_prm.host.plugin import DEMO_MODELS
            from vlmeval_prm.host.search_model import PRMSearch
            from vlmeval_prm.search import SearchConfig, search_method

            args = inspect.signature(PRMSearch).bind(**entry).arguments
            search_method(args.get("method", "beam"))
            SearchConfig(**{k: args[k] for k in ("n", "width", "iterations") if k in args})
            assert args["model"] in supported_VLM or args["model"] in DEMO_MODELS
            continue
        if cls == "PRMJudge":  # a PRM evaluated as a model (VisualProcessBench): its spec, its backend's options
            from vlmeval_prm.prm import backend_class, parse_spec

            prm, options = entry.pop("prm"), entry
            parse_spec(prm)
            inspect.signature(backend_class(prm)).bind("target", **options)
            continue
        args = inspect.signature(BestOfN).bind(**entry).arguments
        sampling = {k: args[k] for k in inspect.signature(SamplingConfig).parameters if k in args}
        SamplingConfig(**sampling)
        if "prm" in args:
            validate_spec(args["prm"], args.get("prm_options"))
        base = args["model"]
        if isinstance(base, str):
            assert base in supported_VLM, f"{name}: {base} is not a supported_VLM name"
        else:
            base = dict(base)
            cls = getattr(vlmeval.api, base.get("class", ""), None) or getattr(vlmeval.vlm, base.pop("class"))
            base.pop("class", None)
            inspect.signature(cls).bind(**base)
