"""What the wheels carry: the library and the startup hook, never test code; editable installs
(``pip install -e .``) get the hook too. Built in-process with hatchling, the build backend pip uses
for this project (pyproject.toml), so the check needs no network."""

import zipfile
from pathlib import Path

import pytest

hatchling_wheel = pytest.importorskip("hatchling.builders.wheel", reason="pip install -e '.[test]' brings hatchling")

REPO = Path(__file__).resolve().parents[1]
HOOK_FILES = ("vlmeval_prm_hook.py", "vlmeval_prm_hook.pth")


def build(tmp_path, version: str) -> zipfile.ZipFile:
    (path,) = hatchling_wheel.WheelBuilder(str(REPO)).build(directory=str(tmp_path), versions=[version])
    return zipfile.ZipFile(path)


def test_wheel_holds_the_library_and_the_hook_and_no_test_code(tmp_path):
    wheel = build(tmp_path, "standard")
    names = wheel.namelist()
    outside = [n for n in names if not n.startswith(("vlmeval_prm/", "vlmeval_prm-")) and n not in HOOK_FILES]
    assert not outside, outside
    test_code = [
        n
        for n in names
        if "standin" in n
        or {"tests", "testing"} & set(n.split("/"))
        or n.rpartition("/")[2].startswith(("test_", "conftest"))
    ]
    assert not test_code, test_code
    assert "vlmeval_prm/host/plugin.py" in names
    for hook in HOOK_FILES:
        assert wheel.read(hook) == (REPO / "plugins" / hook).read_bytes()
    entry_points = wheel.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "[vlmeval.plugins]" in entry_points and "vlmeval_prm.host.plugin:register" in entry_points


def test_editable_wheel_installs_the_hook(tmp_path):
    """hatchling applies ``force-include`` to editable wheels too, so no manual ``install-hook`` step."""
    wheel = build(tmp_path, "editable")
    for hook in HOOK_FILES:
        assert wheel.read(hook) == (REPO / "plugins" / hook).read_bytes()
