"""Build the demo's policy and PRM once and cache them: ``python -m vlmeval_prm.demo.build``.

Layout: ``<cache>/shapes-v<N>/{policy,prm}/`` (``save_pretrained`` checkpoints with their processor),
``heldout_steps.jsonl`` (Monte-Carlo step labels of the policy's solutions to the held-out questions)
and ``build.json`` (the recipe, what each stage took, label and accuracy statistics). As for the
tiny models, the build happens in a temporary sibling directory renamed into place, so concurrent
processes never see half a build and a finished one is never redone. ``--seed k`` (k != 0) trains the
same recipe from another seed into ``<cache>/shapes-v<N>-seed<k>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from vlmeval_prm.demo.paths import BUILD_INFO, HELDOUT_LABELS, POLICY_DIR, PRM_DIR, SEED_ENV, demo_dir, demo_seed
from vlmeval_prm.demo.task import make_problem
from vlmeval_prm.demo.train import Labelled, Recipe, Timer, build_untrained, mc_label, train_policy, train_prm
from vlmeval_prm.logs import get_logger

log = get_logger(__name__)


def is_built(cache_dir: str | None = None, seed: int | None = None) -> bool:
    return (demo_dir(cache_dir, seed) / BUILD_INFO).is_file()


def ensure_built(cache_dir: str | None = None, recipe: Recipe | None = None, seed: int | None = None) -> Path:
    """The cached build's directory, building it first when there is none. ``seed`` (default:
    ``$VLMEVAL_PRM_DEMO_SEED``, else 0) is the recipe's seed and picks the folder."""
    seed = demo_seed() if seed is None else seed
    final = demo_dir(cache_dir, seed)
    if is_built(cache_dir, seed):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    try:
        _build(tmp, dataclasses.replace(recipe or Recipe(), seed=seed))
        tmp.chmod(0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_built(cache_dir, seed):  # not a lost race with another builder: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _stats(labelled: list[Labelled]) -> dict:
    steps = [lab for x in labelled for lab in x.labels]
    worked = [x for x in labelled if len(x.steps) > 1]
    return {
        "solutions": len(labelled),
        "accuracy": round(sum(x.correct for x in labelled) / max(len(labelled), 1), 4),
        "guesses": len(labelled) - len(worked),
        "worked_accuracy": round(sum(x.correct for x in worked) / max(len(worked), 1), 4),
        "steps": len(steps),
        "minus_steps": sum(lab < 0 for lab in steps),
    }


def _build(out: Path, recipe: Recipe) -> None:
    import torch
    from tqdm import tqdm

    torch.manual_seed(recipe.seed)
    timer = Timer()
    log.info("building the demo models in %s (seeded; a few minutes on CPU)", out)
    with timer("policy"):
        model, processor = build_untrained(recipe)
        policy_losses = train_policy(model, processor, recipe, tqdm)
        model.save_pretrained(out / POLICY_DIR)
        processor.save_pretrained(out / POLICY_DIR)
    with timer("mc_labels"):
        problems = [make_problem("train", recipe.policy_problems + i) for i in range(recipe.mc_problems)]
        labelled = mc_label(model, processor, problems, recipe, recipe.seed + 3, tqdm)
    with timer("prm"):
        prm, prm_losses = train_prm(str(out / POLICY_DIR), labelled, recipe, tqdm)
        prm.model.save_pretrained(out / PRM_DIR)
        prm.inputs.processor.save_pretrained(out / PRM_DIR)
    with timer("heldout_labels"):
        heldout = mc_label(
            model,
            processor,
            [make_problem("test", i) for i in range(recipe.heldout_problems)],
            recipe,
            recipe.seed + 4,
            tqdm,
        )
        with open(out / HELDOUT_LABELS, "w", encoding="utf-8") as f:
            for x in heldout:
                f.write(
                    json.dumps(
                        {
                            "index": x.problem.index,
                            "steps": x.steps,
                            "labels": x.labels,
                            "mc": x.mc,
                            "correct": x.correct,
                        }
                    )
                    + "\n"
                )
    info = {
        "recipe": recipe.to_dict(),
        "seconds": timer.times,
        "torch_threads": torch.get_num_threads(),
        "policy_loss": [round(v, 4) for v in policy_losses[-10:]],
        "prm_loss": [round(v, 4) for v in prm_losses[-10:]],
        "train_labels": _stats(labelled),
        "heldout_labels": _stats(heldout),
    }
    (out / BUILD_INFO).write_text(json.dumps(info, indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlmeval_prm.demo.build", description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", help="default: $VLMEVAL_PRM_HOME/demo or ~/.cache/vlmeval_prm/demo")
    parser.add_argument(
        "--seed",
        type=int,
        help=f"training seed (default: ${SEED_ENV}, else 0); a seed other than 0 is built into "
        "shapes-v<N>-seed<k>, which `vlmeval-prm demo` uses when run with that variable set",
    )
    args = parser.parse_args(argv)
    path = ensure_built(args.cache_dir, seed=args.seed)
    print(path)
    print((path / BUILD_INFO).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
