"""The startup hook: lazy (no vlmeval import in unrelated processes), fail-safe, and effective."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not any(Path(p, "vlmeval_prm_hook.pth").exists() for p in sys.path),
    reason="hook not installed: run `vlmeval-prm install-hook` (the README's setup does)")


def run_py(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def test_plain_interpreter_imports_nothing_of_vlmeval():
    out = run_py("""
        import sys
        assert "vlmeval_prm_hook" in sys.modules, "hook not active"
        print(sorted(m for m in sys.modules if m.startswith(("vlmeval", "torch", "importlib.metadata"))))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['vlmeval_prm_hook']"


def test_hook_import_cost_is_small():
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True)
    line = next(ln for ln in out.stderr.splitlines() if ln.rstrip().endswith("vlmeval_prm_hook"))
    cumulative_us = int(line.split("|")[1])
    assert cumulative_us < 5000, line


def test_config_import_registers_bon_names_without_building_models():
    out = run_py("""
        import vlmeval.config as c
        names = ["InternVL2_5-8B-BoN8", "Qwen2.5-VL-7B-Instruct-BoN16", "GPT4o-BoN4", "VLMEvalPRM-TinyPolicy-BoN4"]
        missing = [n for n in names if n not in c.supported_VLM]
        assert not missing, missing
        f = c.supported_VLM["InternVL2_5-8B-BoN8"]
        assert f.func.__name__ == "BestOfN" and f.func.resolve().__module__ == "vlmeval_prm.host.bon"
        assert f.keywords["model"] == "InternVL2_5-8B" and f.keywords["n"] == 8
        from vlmeval_prm.host.plugin import PRM_MODELS
        assert "VisualPRM-8B" in c.supported_VLM and "VisualPRM-8B-BoN8" not in c.supported_VLM
        bases = [k for k in c.supported_VLM if "-BoN" not in k and k not in PRM_MODELS]
        assert all(f"{b}-BoN64" in c.supported_VLM for b in bases)
        import vlmeval.vlm, vlmeval.dataset
        assert hasattr(vlmeval.vlm, "BestOfN")
        assert "VLMEvalPRM_MiniMCQ" in vlmeval.dataset.SUPPORTED_DATASETS
        print(len(bases))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) > 500


def test_broken_plugin_warns_once_and_vlmeval_still_works(tmp_path):
    """A second plugin distribution whose entry point raises: one warning line, our names still there."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vlmeval.plugins]\nbroken = broken_plugin_mod:register\n")
    (tmp_path / "broken_plugin_mod.py").write_text("def register():\n    raise RuntimeError('kaputt')\n")
    out = run_py("""
        import vlmeval.config as c
        assert "GPT4o-BoN4" in c.supported_VLM
        print("ok")
    """, PYTHONPATH=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
    warnings = [ln for ln in out.stderr.splitlines() if "kaputt" in ln]
    assert len(warnings) == 1 and "plugin 'broken' failed" in warnings[0]
