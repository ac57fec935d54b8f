import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_paths():
    """The two tiny models (built once per machine, then cached)."""
    from vlmeval_prm.tiny import tiny_model_path

    return {"policy": tiny_model_path("policy"), "prm": tiny_model_path("prm")}
