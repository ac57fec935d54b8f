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
#: The build's training seed (``Recipe.seed``); 0 is the default build. Another seed is built into
#: its own folder, and ``vlmeval-prm demo`` run with this variable set uses (and builds) that one:
#: how the README's spread over seeds is measured.
SEED_ENV = "VLMEVAL_PRM_DEMO_SEED"
DEFAULT_SEED = 0


def demo_seed() -> int:
    """``$VLMEVAL_PRM_DEMO_SEED``, else the default seed (0)."""
    value = os.environ.get(SEED_ENV, "").strip()
    try:
        return int(value) if value else DEFAULT_SEED
    except ValueError:
        raise ValueError(f"{SEED_ENV}={value!r}: expected an integer seed") from None


def demo_dir(cache_dir: str | None = None, seed: int | None = None) -> Path:
    """``<cache>/shapes-v<DEMO_RECIPE_VERSION>`` for the default seed, ``...-seed<k>`` for seed k (default:
    ``demo_seed()``); cache: ``$VLMEVAL_PRM_HOME/demo`` or ``~/.cache/vlmeval_prm/demo``."""
    if cache_dir:
        root = Path(cache_dir).expanduser()
    else:
        home = os.environ.get(HOME_ENV)
        root = Path(home) / "demo" if home else Path.home() / ".cache" / "vlmeval_prm" / "demo"
    seed = demo_seed() if seed is None else seed
    suffix = "" if seed == DEFAULT_SEED else f"-seed{seed}"
    return root / f"shapes-v{DEMO_RECIPE_VERSION}{suffix}"


def policy_path(cache_dir: str | None = None, seed: int | None = None) -> str:
    return str(demo_dir(cache_dir, seed) / POLICY_DIR)


def prm_path(cache_dir: str | None = None, seed: int | None = None) -> str:
    return str(demo_dir(cache_dir, seed) / PRM_DIR)
