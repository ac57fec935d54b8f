"""D10: a plugin that calls ``sys.exit`` (while being imported, or while registering) costs one
warning line; vlmeval's import, the other plugins and the user's run go on."""

import os
import sys
from pathlib import Path

import pytest
from test_hook import run_py

pytestmark = pytest.mark.skipif(
    not any(Path(p, "vlmeval_prm_hook.pth").exists() for p in sys.path),
    reason="hook not installed: `pip install -e .` (the README's setup) installs it",
)


def plugin_dist(root: Path, name: str, module_source: str) -> None:
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[vlmeval.plugins]\n{name} = {name}_mod:register\n")
    (root / f"{name}_mod.py").write_text(module_source)


def test_plugins_calling_sys_exit_do_not_end_the_run(tmp_path):
    plugin_dist(tmp_path, "exits_on_register", "import sys\ndef register():\n    sys.exit(3)\n")
    plugin_dist(tmp_path, "exits_on_import", "import sys\nsys.exit('bye from import')\ndef register():\n    pass\n")
    out = run_py(
        """
        import vlmeval.config as c
        assert "GPT4o-BoN4" in c.supported_VLM and "VisualPRM-8B" in c.supported_VLM
        print("ok")
    """,
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
    on_register = [ln for ln in out.stderr.splitlines() if "exits_on_register" in ln]
    on_import = [ln for ln in out.stderr.splitlines() if "exits_on_import" in ln]
    assert len(on_register) == 1 and "failed: SystemExit: 3" in on_register[0], out.stderr[-3000:]
    assert len(on_import) == 1 and "cannot load plugin" in on_import[0] and "bye from import" in on_import[0]
