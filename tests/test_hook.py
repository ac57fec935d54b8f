"""The startup hook: lazy (no vlmeval import in unrelated processes), fail-safe, and effective."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vlmeval_prm.constants import DEMO_ENV, OPTIONS_ENV

DISABLE_ENV = "VLMEVAL_PLUGINS_DISABLE"  # read by the dependency-free hook (plugins/vlmeval_prm_hook.py)

pytestmark = pytest.mark.skipif(
    not any(Path(p, "vlmeval_prm_hook.pth").exists() for p in sys.path),
    reason="hook not installed: `pip install -e .` (the README's setup) installs it",
)


def run_py(code, **env):
    """A fresh interpreter; the switches under test are off unless given."""
    base = {k: v for k, v in os.environ.items() if k not in (DISABLE_ENV, DEMO_ENV, OPTIONS_ENV)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env={**base, **env}, timeout=600
    )


def test_installed_hook_is_this_checkouts():
    """An editable install holds a copy of the hook: after editing plugins/, these tests would test the
    old one."""
    source = Path(__file__).resolve().parents[1] / "plugins"
    for name in ("vlmeval_prm_hook.py", "vlmeval_prm_hook.pth"):
        installed = next(Path(p, name) for p in sys.path if Path(p, name).exists())
        assert installed.read_bytes() == (source / name).read_bytes(), (
            f"{installed} is stale: rerun `pip install -e .` or `vlmeval-prm install-hook`"
        )


def test_plain_interpreter_imports_nothing_of_vlmeval():
    out = run_py("""
        import sys
        assert "vlmeval_prm_hook" in sys.modules, "hook not active"
        print(sorted(m for m in sys.modules if m.startswith(("vlmeval", "torch", "importlib.metadata"))))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['vlmeval_prm_hook']"


def test_hook_costs_one_small_module_at_startup():
    """At interpreter start the hook adds exactly one module (itself): no vlmeval, no entry-point
    scan (importlib.metadata), nothing heavy until ``vlmeval.config`` is imported. Counted, not timed."""
    code = "import sys, json; print(json.dumps(sorted(sys.modules)))"

    def modules(**env):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, check=True
        )
        return set(json.loads(out.stdout))

    added = modules() - modules(VLMEVAL_PLUGINS_DISABLE="1")
    assert added == {"vlmeval_prm_hook"}, added


def test_config_import_registers_bon_names_without_building_models():
    out = run_py("""
        import vlmeval.config as c
        names = ["InternVL2_5-8B-BoN8", "Qwen2.5-VL-7B-Instruct-BoN16", "GPT4o-BoN4"]
        missing = [n for n in names if n not in c.supported_VLM]
        assert not missing, missing
        f = c.supported_VLM["InternVL2_5-8B-BoN8"]
        assert f.func.__name__ == "BestOfN" and f.func.resolve().__module__ == "vlmeval_prm.host.bon"
        assert f.keywords["model"] == "InternVL2_5-8B" and f.keywords["n"] == 8
        from vlmeval_prm.host.plugin import PRM_MODELS
        assert "VisualPRM-8B" in c.supported_VLM and "VisualPRM-8B-BoN8" not in c.supported_VLM
        bases = [k for k in c.supported_VLM if "-BoN" not in k and k not in PRM_MODELS]
        assert all(f"{b}-BoN64" in c.supported_VLM for b in bases)
        demo = [k for k in c.supported_VLM if k.startswith("VLMEvalPRM-")]
        assert not demo, demo  # the tiny demo models only with VLMEVAL_PRM_DEMO=1
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
    out = run_py(
        """
        import vlmeval.config as c
        assert "GPT4o-BoN4" in c.supported_VLM
        print("ok")
    """,
        PYTHONPATH=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
    warnings = [ln for ln in out.stderr.splitlines() if "kaputt" in ln]
    assert len(warnings) == 1 and "plugin 'broken' failed" in warnings[0]


def test_demo_switch_registers_the_tiny_models():
    out = run_py(
        """
        import vlmeval.config as c
        print(sorted(k for k in c.supported_VLM if k.startswith("VLMEvalPRM-")))
    """,
        **{DEMO_ENV: "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    names = eval(out.stdout.strip().splitlines()[-1])
    assert {"VLMEvalPRM-TinyPolicy", "VLMEvalPRM-TinyPRM", "VLMEvalPRM-TinyPolicy-BoN4"} <= set(names)
    assert not [n for n in names if n.startswith("VLMEvalPRM-TinyPRM-BoN")]  # a PRM gets no Best-of-N names


REGISTERED_NOTHING = """
    import re, sys
    import vlmeval.config as c, vlmeval.vlm, vlmeval.dataset
    ours = [k for k in c.supported_VLM if re.fullmatch(r".+-BoN[0-9]+", k) or k.startswith("VLMEvalPRM-")]
    assert not ours, ours[:5]
    assert not hasattr(vlmeval.vlm, "BestOfN") and "VLMEvalPRM_MiniMCQ" not in vlmeval.dataset.SUPPORTED_DATASETS
    assert not [m for m in sys.modules if m.partition(".")[0] == "vlmeval_prm"]
    print("nothing registered")
"""


def test_disable_switch_registers_nothing():
    """``VLMEVAL_PLUGINS_DISABLE=1``: the .pth imports nothing, vlmeval keeps only its own names."""
    out = run_py(
        "import sys; assert 'vlmeval_prm_hook' not in sys.modules\n" + textwrap.dedent(REGISTERED_NOTHING),
        **{DISABLE_ENV: "1", DEMO_ENV: "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("nothing registered")


def test_disable_switch_set_in_process_before_vlmeval_loads():
    out = run_py(f"import os; os.environ[{DISABLE_ENV!r}] = '1'\n" + textwrap.dedent(REGISTERED_NOTHING))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("nothing registered")


def test_invalid_options_are_one_error_and_vlmeval_still_imports():
    """Invalid ``VLMEVAL_PRM_OPTIONS``: one logged error naming it; every name is still registered and
    refuses to build with that error (tests/test_faults_options.py has the cases)."""
    out = run_py(
        """
        import vlmeval.config as c
        assert "VisualPRM-8B" in c.supported_VLM and "GPT4o-BoN4" in c.supported_VLM
        try:
            c.supported_VLM["GPT4o-BoN4"]()
        except ValueError as exc:
            print("refused:", exc)
    """,
        **{OPTIONS_ENV: "{not json"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"refused: {OPTIONS_ENV} is not valid JSON" in out.stdout, out.stdout[-3000:]
    errors = [ln for ln in out.stderr.splitlines() if OPTIONS_ENV in ln]
    assert len(errors) == 1 and "ERROR" in errors[0], out.stderr[-3000:]
