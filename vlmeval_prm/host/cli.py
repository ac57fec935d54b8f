"""``vlmeval-prm``: install the startup hook (editable installs), run the offline demo, report."""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from vlmeval_prm.store.jsonl import index_records, read_records
from vlmeval_prm.store.paths import store_file

HOOK = "vlmeval_prm_hook"
DEMO_MODEL = "VLMEvalPRM-TinyPolicy-BoN4"
DEMO_DATA = "VLMEvalPRM_MiniMCQ"


def hook_source() -> Path:
    """The hook files in a source checkout (editable install) or beside the installed package."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package.parent / "plugins", package.parent):
        if (folder / f"{HOOK}.pth").exists() and (folder / f"{HOOK}.py").exists():
            return folder
    raise FileNotFoundError(f"{HOOK}.pth/.py not found next to {package}")


def install_hook(args) -> int:
    """Wheels install the hook themselves; editable installs get no ``.pth``, so copy it in."""
    site = Path(args.site_packages or sysconfig.get_paths()["purelib"])
    targets = [site / f"{HOOK}.py", site / f"{HOOK}.pth"]
    if args.remove:
        for t in targets:
            t.unlink(missing_ok=True)
        print(f"removed the vlmeval plugin hook from {site}")
        return 0
    src = hook_source()
    if src.resolve() == site.resolve():
        print(f"hook already installed in {site}")
        return 0
    for t in targets:
        shutil.copyfile(src / t.name, t)
    print(f"installed the vlmeval plugin hook into {site}")
    return 0


def demo(args) -> int:
    """Best-of-4 with the tiny policy and tiny PRM on the shipped mini dataset, through VLMEvalKit."""
    cmd = [sys.executable, "-m", "vlmeval.run", "--model", args.model, "--data", args.data,
           "--judge", "exact_matching", "--work-dir", args.work_dir, *args.extra]
    print("running:", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    folder = os.path.join(args.work_dir, args.model)
    store = store_file(folder, args.model, args.data)
    if not os.path.exists(store):
        print(f"no candidate store at {store}: the run failed (exit code {rc})")
        return rc or 1
    samples = index_records(read_records(store))
    n_cands = sum(len(e.candidates) for e in samples.values())
    n_scored = sum(1 for e in samples.values() for r in e.scores.values() if r.get("step_scores"))
    print(f"\ncandidate store: {store}\n  {len(samples)} samples, {n_cands} candidates, {n_scored} scored step by step")
    for path in sorted(glob.glob(os.path.join(folder, f"{args.model}_{args.data}*"))):
        if path != store:
            print("VLMEvalKit output:", path)
    print("\nThe tiny models have random weights: their answers are meaningless. The demo proves the pipeline.")
    return rc


def report(args) -> int:
    """The Best-of-N table for every --model x --data run under --work-dir; 1 if any run failed."""
    from vlmeval_prm.report.collect import report as build_report

    judge_kwargs = json.loads(args.judge_args) if args.judge_args else {}
    if args.nproc is not None:
        judge_kwargs["nproc"] = args.nproc
    runs = [(args.work_dir, m, d) for m in args.model for d in args.data]
    results = build_report(runs, ks=args.ks, judge=args.judge, judge_kwargs=judge_kwargs)
    return int(any("error" in r for r in results.values()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vlmeval-prm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install-hook", help="install the VLMEvalKit plugin startup hook (.pth) into site-packages")
    p.add_argument("--remove", action="store_true")
    p.add_argument("--site-packages", help="target directory (default: this interpreter's purelib)")
    p.set_defaults(func=install_hook)
    p = sub.add_parser("demo", help="offline CPU demo: tiny policy + tiny PRM, Best-of-4, mini dataset")
    p.add_argument("--model", default=DEMO_MODEL)
    p.add_argument("--data", default=DEMO_DATA)
    p.add_argument("--work-dir", default="outputs")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="further arguments for vlmeval.run")
    p.set_defaults(func=demo)
    p = sub.add_parser("report", help="Best-of-N accuracy by N for every strategy, from stored runs")
    p.add_argument("--work-dir", default="outputs", help="vlmeval.run's --work-dir")
    p.add_argument("--model", nargs="+", required=True, help="Best-of-N model names of the runs")
    p.add_argument("--data", nargs="+", required=True, help="dataset names of the runs")
    p.add_argument("--judge", help="judge for the dataset's evaluate() (default: the one the run used)")
    p.add_argument("--judge-args", help="JSON object of further judge settings, as in vlmeval.run")
    p.add_argument("--nproc", type=int, help="judge parallelism (default 4)")
    p.add_argument("--ks", type=int, nargs="+", help="values of N (default: 1, 2, 4, ... up to the run's N, and N)")
    p.set_defaults(func=report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
