"""Where the demo's trained models live. Light on purpose: the plugin reads these paths at registration."""

from __future__ import annotations

import os
from pathlib import Path

from vlmeval_prm.constants import HOME_ENV

#: Bump whenever the task, the recipe or the training code changes what gets built.
DEMO_RECIPE_VERSION = 2
POLICY_DIR, PRM_DIR = "policy", "prm"
#: Monte-Carlo step labels of the policy's own solutions to held-out questions (tests/test_demo_models.py).
HELDOUT_LABELS = "heldout_steps.jsonl"
#: What the build measured (timings, label counts, accuracies), as JSON.
BUILD_INFO = "build.json"


def demo_dir(cache_dir: str | None = None) -> Path:
    """``<cache>/shapes-v<DEMO_RECIPE_VERSION>``; cache: ``$VLMEVAL_PRM_HOME/demo`` or ``~/.cache/vlmeval_prm/demo``."""
    if cache_dir:
        root = Path(cache_dir).expanduser()
    else:
        home = os.environ.get(HOME_ENV)
        root = Path(home) / "demo" if home else Path.home() / ".cache" / "vlmeval_prm" / "demo"
    return root / f"shapes-v{DEMO_RECIPE_VERSION}"


def policy_path(cache_dir: str | None = None) -> str:
    return str(demo_dir(cache_dir) / POLICY_DIR)


def prm_path(cache_dir: str | None = None) -> str:
    return str(demo_dir(cache_dir) / PRM_DIR)
