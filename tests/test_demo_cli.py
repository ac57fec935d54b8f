"""``vlmeval-prm demo`` hands VLMEvalKit the switch that registers the demo models (for its run only)
with ORM scoring on, and reports the run; it first builds the trained shapes models (``--tiny`` needs none),
from the seed ``VLMEVAL_PRM_DEMO_SEED`` names (``python -m vlmeval_prm.demo.build --seed k`` builds one).

The real demo runs are tests/test_demo_models.py's (trained) and tests/test_e2e_bon.py's (tiny); here
the build, ``subprocess.call`` and the report are recorded instead of run, and the registration that
switch controls is tested for real in tests/test_hook.py.
"""

import json
import os

import pytest
from commands import HOST

from vlmeval_prm.constants import DEMO_ENV, HOME_ENV, OPTIONS_ENV
from vlmeval_prm.demo import build
from vlmeval_prm.host import cli


@pytest.mark.parametrize(
    "flags, model, data, builds",
    [
        ([], cli.SHAPES_MODEL, cli.SHAPES_DATA, True),
        (["--tiny"], cli.DEMO_MODEL, cli.DEMO_DATA, False),
    ],
)
def test_demo_runs_vlmeval_with_the_demo_switch_for_its_run_only(
    tmp_path, monkeypatch, capsys, flags, model, data, builds
):
    monkeypatch.delenv(DEMO_ENV, raising=False)
    monkeypatch.delenv(OPTIONS_ENV, raising=False)
    built, calls = [], []
    monkeypatch.setattr(build, "ensure_built", lambda: built.append(1) or tmp_path)
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 3)
    rc = cli.main(["demo", *flags, "--work-dir", str(tmp_path)])
    ((cmd, env),) = calls
    assert built == ([1] if builds else [])  # trained models are built (or found cached) before VLMEvalKit starts
    assert cmd[: len(HOST.command())] == HOST.command()  # python -m vlmeval.run, or python <checkout>/run.py
    assert cmd[cmd.index("--model") + 1] == model and cmd[cmd.index("--data") + 1] == data
    assert cmd[cmd.index("--work-dir") + 1] == str(tmp_path)
    assert env[DEMO_ENV] == "1" and DEMO_ENV not in os.environ
    assert json.loads(env[OPTIONS_ENV]) == {"orm": True} and OPTIONS_ENV not in os.environ
    assert rc == 3  # no store: the run's own exit code is passed on
    assert f"{DEMO_ENV}=1" in capsys.readouterr().out  # the printed command can be rerun as shown


def test_demo_keeps_the_users_options(tmp_path, monkeypatch):
    monkeypatch.setenv(OPTIONS_ENV, '{"orm": false}')
    calls = []
    monkeypatch.setattr(build, "ensure_built", lambda: tmp_path)
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: calls.append(env) or 3)
    cli.main(["demo", "--tiny", "--work-dir", str(tmp_path)])
    assert calls[0][OPTIONS_ENV] == '{"orm": false}'


def test_a_seed_has_its_own_build_folder_and_the_demo_follows_the_variable(tmp_path, monkeypatch):
    """``python -m vlmeval_prm.demo.build --seed k`` trains from seed k into ``shapes-v<N>-seed<k>``;
    ``VLMEVAL_PRM_DEMO_SEED=k`` points every reader of the build (the demo's policy, its PRM spec, the
    demo command's build step) at that folder. The default seed keeps the folder it always had."""
    from vlmeval_prm.demo import paths

    monkeypatch.delenv(paths.SEED_ENV, raising=False)
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    default = paths.demo_dir()
    assert default == tmp_path / "demo" / f"shapes-v{paths.DEMO_RECIPE_VERSION}"
    assert paths.demo_dir(seed=0) == default and paths.demo_dir(seed=3) == default.with_name(default.name + "-seed3")
    monkeypatch.setenv(paths.SEED_ENV, "3")
    assert paths.demo_dir() == paths.demo_dir(seed=3)
    assert paths.policy_path() == str(paths.demo_dir(seed=3) / paths.POLICY_DIR)
    assert paths.prm_path() == str(paths.demo_dir(seed=3) / paths.PRM_DIR)
    monkeypatch.setenv(paths.SEED_ENV, "three")
    with pytest.raises(ValueError, match=paths.SEED_ENV):
        paths.demo_dir()


@pytest.mark.parametrize(
    "argv, env, seed", [([], None, 0), (["--seed", "2"], None, 2), ([], "5", 5), (["--seed", "0"], "5", 0)]
)
def test_build_trains_from_the_seed_it_is_given(tmp_path, monkeypatch, capsys, argv, env, seed):
    from vlmeval_prm.demo import paths

    if env is None:
        monkeypatch.delenv(paths.SEED_ENV, raising=False)
    else:
        monkeypatch.setenv(paths.SEED_ENV, env)
    recipes = []

    def fake_build(out, recipe):
        recipes.append(recipe)
        (out / paths.BUILD_INFO).write_text(json.dumps({"recipe": recipe.to_dict()}))

    monkeypatch.setattr(build, "_build", fake_build)
    assert build.main(["--cache-dir", str(tmp_path), *argv]) == 0
    assert [r.seed for r in recipes] == [seed]
    folder = paths.demo_dir(str(tmp_path), seed)
    assert folder.name.endswith(f"-seed{seed}") == (seed != 0) and build.is_built(str(tmp_path), seed)
    assert capsys.readouterr().out.startswith(str(folder))
    assert build.main(["--cache-dir", str(tmp_path), *argv]) == 0 and len(recipes) == 1  # cached: not rebuilt
