"""vlmeval-prm: Best-of-N with process reward models for VLMEvalKit (demo, check-prm, report, serve, models)."""

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

from vlmeval_prm import __version__
from vlmeval_prm.constants import DEFAULT_PRM_SPEC, DEMO_ENV, OPTIONS_ENV, SPEC_ENV
from vlmeval_prm.host.runner import ROOT_ENV, HostNotFound, find_host
from vlmeval_prm.store.jsonl import index_records, read_records
from vlmeval_prm.store.paths import store_file

HOOK = "vlmeval_prm_hook"
#: ``vlmeval-prm demo``: Best-of-8 of the policy trained on the synthetic shapes task, scored by the PRM
#: trained on its Monte-Carlo step labels (``vlmeval_prm.demo``), on the task's held-out split.
SHAPES_MODEL = "VLMEvalPRM-ShapesPolicy-BoN8"
SHAPES_DATA = "VLMEvalPRM_Shapes"
#: ``vlmeval-prm demo --tiny``: Best-of-4 of the random-weight tiny policy, scored by the tiny PRM, on the
#: shipped set: the whole pipeline in seconds, with no effect to show.
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
    """Copy the hook in again. Every install (``pip install -e .`` too) puts it in site-packages;
    an editable install holds a copy, so this refreshes it after ``plugins/`` changed."""
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
    """Best-of-N through VLMEvalKit, then the Best-of-N report: by default the policy and PRM trained on
    the synthetic shapes task (built once and cached; ``.ci/install`` builds them) on its held-out
    split; with ``--tiny`` the random-weight tiny models on the shipped mini set (seconds). The demo
    names exist only with ``VLMEVAL_PRM_DEMO=1``, set for this run alone, which also records ORM
    scores (``{"orm": true}``) so that the report has every strategy."""
    try:
        find_host(args.vlmevalkit_root)  # before the (slow) demo build
    except HostNotFound as exc:
        print(f"vlmeval-prm demo: {exc}", file=sys.stderr)
        return 2
    if args.search:
        return demo_search(args)
    if args.tiny:
        args.model, args.data = args.model or DEMO_MODEL, args.data or DEMO_DATA
    else:
        from vlmeval_prm.demo.build import ensure_built

        print("demo models:", ensure_built(), flush=True)
        args.model, args.data = args.model or SHAPES_MODEL, args.data or SHAPES_DATA
    host = find_host(args.vlmevalkit_root)
    env = {**os.environ, DEMO_ENV: "1"}
    env.setdefault(OPTIONS_ENV, json.dumps({"orm": True}))
    cmd = [
        *host.command(),
        "--model",
        args.model,
        "--data",
        args.data,
        "--judge",
        "exact_matching",
        "--work-dir",
        args.work_dir,
        *args.extra,
    ]
    print("running:", f"{DEMO_ENV}=1", f"{OPTIONS_ENV}='{env[OPTIONS_ENV]}'", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, env=env)
    folder = os.path.join(args.work_dir, args.model)
    store = store_file(folder, args.model, args.data)
    if not os.path.exists(store):
        print(f"no candidate store at {store}: the run failed (exit code {rc})")
        return rc or 1
    samples = index_records(read_records(store))
    n_cands = sum(len(e.candidates) for e in samples.values())
    n_scored = sum(
        any(k[0] == i and k[2] == "step" and k[3] == c.sampling and r.usable for k, r in e.scores.items())
        for e in samples.values()
        for i, c in e.candidates.items()
    )
    print(f"\ncandidate store: {store}\n  {len(samples)} samples, {n_cands} candidates, {n_scored} scored step by step")
    for path in sorted(glob.glob(os.path.join(folder, f"{args.model}_{args.data}*"))):
        if path != store:
            print("VLMEvalKit output:", path)
    if rc:
        return rc
    return demo_report(args.work_dir, args.model, args.data, DEMO_MEANING["tiny" if args.tiny else "trained"])


def demo_search(args) -> int:
    """``demo --search``: Best-of-N, beam search and DVTS (``vlmeval_prm.demo.search``) on the demo task."""
    from tabulate import tabulate

    from vlmeval_prm.demo import search
    from vlmeval_prm.host.plugin import SHAPES_POLICY, TINY_POLICY, TINY_PRM_SPEC

    if args.tiny:  # (policy, PRM, data, its class, N, tokens per step)
        setup = (TINY_POLICY, TINY_PRM_SPEC, DEMO_DATA, "VLMEvalPRMMiniMCQ", 4, 12)
    else:
        from vlmeval_prm.demo.build import ensure_built
        from vlmeval_prm.demo.paths import prm_path

        print("demo models:", ensure_built(), flush=True)
        setup = (SHAPES_POLICY, f"transformers:{prm_path()}", SHAPES_DATA, "VLMEvalPRMShapes", 8, 32)
    policy, prm, data, cls, n, max_step_tokens = setup
    cfg = search.config(policy, prm, {data: {"class": cls, "dataset": data}}, n, 8, max_step_tokens)
    env = {**os.environ, DEMO_ENV: "1"}
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    rc, table = search.run([*find_host(args.vlmevalkit_root).command(), *extra], args.work_dir, cfg, env, data)
    if rc:
        print(f"the run failed (exit code {rc}); what it stored is kept and a rerun resumes it", file=sys.stderr)
        return rc
    print(f"\nSearch at N = {n} on {data}: accuracy (%) and compute per question")
    print(tabulate(table, headers=["method", *table.columns], floatfmt=".1f"))
    print(
        "Same N for every method, not the same compute: compare accuracy against the tokens columns "
        f"({os.path.join(args.work_dir, 'search_demo.csv')})."
    )
    return rc


#: The one line the demo prints under its table: what its numbers can and cannot say.
DEMO_MEANING = {
    "trained": "One seeded run on this machine: figures move by tens of points across seeds and CPUs (README: "
    "the demo's spread); what holds everywhere is PRM Best-of-N far above Pass@1 and random.",
    "tiny": "Random-weight tiny models: every accuracy is about 0 by design; this run proves the pipeline, "
    "not a result.",
}


def demo_report(work_dir: str, model: str, data: str, meaning: str) -> int:
    """The report of the demo's run, shown as one table (the paper-style accuracy of every strategy by
    N) and one line on what it means; every table and plot the report writes is still written and
    listed. A report that fails prints everything it said."""
    import io

    import pandas as pd
    from tabulate import tabulate

    from vlmeval_prm.report.collect import report as build_report
    from vlmeval_prm.report.paper_table import paper_report, scaling

    said = io.StringIO()
    results = build_report([(work_dir, model, data)], file=said)
    written = paper_report(results, file=said)
    res = results[(work_dir, model, data)]
    if "error" in res or (work_dir, model) not in written:
        print(said.getvalue())
        return 1
    paper = written[(work_dir, model)]
    table = scaling(pd.read_csv(paper["paper_csv"]))
    print(f"\nBest-of-N accuracy (%) on {data} by N, judge {res['judge']}")
    print(tabulate(table, headers=["strategy", *map(str, table.columns)], floatfmt=".1f"))
    print(meaning)
    for path in [*res["paths"].values(), *paper.values()]:
        print("report:", path)
    return 0


def report(args) -> int:
    """The Best-of-N table for every --model x --data run under --work-dir; 1 if any run failed."""
    from vlmeval_prm.report.collect import report as build_report
    from vlmeval_prm.report.paper_table import paper_report

    judge_kwargs = json.loads(args.judge_args) if args.judge_args else {}
    if args.nproc is not None:
        judge_kwargs["nproc"] = args.nproc
    if args.judge_base_url:  # as vlmeval.run's --judge-base-url
        judge_kwargs["api_base"] = f"{args.judge_base_url.rstrip('/')}/chat/completions"
    runs = [(args.work_dir, m, d) for m in args.model for d in args.data]
    if args.compare:
        return compare_report(args, runs, judge_kwargs)
    results = build_report(runs, ks=args.ks, judge=args.judge, judge_kwargs=judge_kwargs)
    paper_report(results, ks=args.ks)  # every benchmark of a model in one table, and the scaling plot
    return int(any("error" in r for r in results.values()))


def compare_report(args, runs: list[tuple[str, str, str]], judge_kwargs: dict) -> int:
    """``report --compare``: the run's scorer and each ``--compare`` scorer on the run's candidates."""
    from vlmeval_prm.prm import validate_spec
    from vlmeval_prm.report.collect import ReportError
    from vlmeval_prm.report.compare import Contender, compare

    try:
        options = json.loads(args.compare_options) if args.compare_options else {}
        benchmarks = dict(item.split("=", 1) for item in args.benchmark or [])
        if not isinstance(options, dict) or set(options) - set(args.compare) or set(benchmarks) - set(args.compare):
            raise ValueError("--compare-options (a JSON object) and --benchmark name only --compare specs")
        contenders = [
            Contender(
                spec,
                options.get(spec, {}),
                benchmark=_number_or_path(benchmarks[spec]) if spec in benchmarks else None,
            )
            for spec in args.compare
        ]
        for contender in contenders:  # every scorer checked before any judging or scoring
            validate_spec(contender.spec, contender.options)
    except ValueError as exc:
        print(f"vlmeval-prm report: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for work_dir, model, data in runs:
        print(f"\n=== {model} x {data}: scorers compared ===", flush=True)
        try:
            compare(work_dir, model, data, contenders, ks=args.ks, judge=args.judge, judge_kwargs=judge_kwargs)
        except (ReportError, ValueError) as exc:
            print(f"cannot compare on {model} x {data}: {exc}")
            failed = 1
    return failed


def _number_or_path(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        if not os.path.isfile(value):
            raise ValueError(f"--benchmark: {value!r} is neither a number nor a file") from None
        return value


def serve(args) -> int:
    """Best-of-N behind an OpenAI-compatible HTTP API (``vlmeval_prm.host.serve``)."""
    from vlmeval_prm.host.serve import API_KEY_ENV, ServeOptions
    from vlmeval_prm.host.serve import serve as run_server

    if args.demo and (args.model or args.config or args.prm or args.n):
        print("--demo serves the tiny demo model and PRM: drop --model/--config/--prm/--n", file=sys.stderr)
        return 2
    opts = ServeOptions(
        model=DEMO_MODEL if args.demo else args.model,
        config=args.config,
        n=args.n,
        prm=args.prm,
        demo=args.demo,
        store_dir=args.store_dir,
        max_concurrency=args.max_concurrency,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        allow_remote_images=args.allow_remote_images,
        image_root=args.image_root,
        vlmevalkit_root=args.vlmevalkit_root,
    )
    try:
        return run_server(opts, host=args.host, port=args.port)
    except (OSError, ValueError, HostNotFound) as exc:
        print(f"vlmeval-prm serve: {exc}", file=sys.stderr)
        return 2


def prms(args) -> int:
    """The PRM formats (``vlmeval_prm.prm.formats``) and the backends each scores on."""
    from vlmeval_prm.prm.formats import DEFAULT_FORMAT, FORMATS, format_class

    rows = []
    for name in sorted(FORMATS):
        fmt = format_class(name)()
        rows.append(
            {
                "format": name,
                "default": name == DEFAULT_FORMAT,
                "backends": list(fmt.backends),
                "labels": None if fmt.head else [fmt.good_token, fmt.bad_token],
                "head": fmt.head,
                "marker": fmt.marker,
                "detected_from": list(fmt.detects),
                "system_prompt": fmt.system_prompt,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    print(f"{'format':<16} {'backends':<24} score read as")
    for r in rows:
        reads = f"{r['head']} head at {r['marker']!r}" if r["head"] else "P({!r}) against {!r}".format(*r["labels"])
        default = "  (default)" if r["default"] else ""
        print(f"{r['format']:<16} {', '.join(r['backends']):<24} {reads}{default}")
    print(
        '\nchoose one with "prm_options": {"format": NAME} in a --config BestOfN entry (check-prm: --options); '
        "an in-process checkpoint whose config.json names a format (detected_from) gets it unasked"
    )
    return 0


def models(args) -> int:
    """Every ``supported_VLM`` name (other plugins' too) with its class and sampling route, taken from
    the adapter registry that Best-of-N uses; the Best-of-N names themselves are left out. Families
    whose sampling depends on the transformers line get the verdict for the installed version
    (``transformers`` in the JSON, a note in the table)."""
    from vlmeval.config import supported_VLM

    from vlmeval_prm.policy.catalog import installed_transformers, model_routes

    rows = model_routes(supported_VLM, use_vllm=args.use_vllm)
    if args.name:
        rows = [r for r in rows if args.name.lower() in r.name.lower()]
    if args.route:
        rows = [r for r in rows if r.route == args.route]
    if args.json:
        print(json.dumps([r.to_record() for r in rows], indent=1))
        return 0
    width = max((len(r.name) for r in rows), default=4)
    print(f"{'name':<{width}}  {'class':<24}  {'route':<12}  how it samples (or why it cannot)")
    for r in rows:
        note = ""
        if r.transformers is not None:
            t = r.transformers
            state = {True: "repaired by the plugin" if t.get("repair") else "works", False: "FAILS", None: "unknown"}
            note = f"  [transformers {t['installed']}: {state[t['works']]}"
            note += f"; needs {t['needs']}]" if t.get("needs") else "]"
        print(f"{r.name:<{width}}  {r.cls:<24}  {r.route:<12}  {r.reason}{note}")
    ok = sum(r.route != "unsupported" for r in rows)
    broken = sum(r.route != "unsupported" and (r.transformers or {}).get("works") is False for r in rows)
    print(f"\n{ok} of {len(rows)} names can sample ({100 * ok / max(len(rows), 1):.0f}%)", end="")
    if broken:
        print(f"; {broken} of them not with the installed transformers {installed_transformers()} (FAILS above)")
    else:
        print()
    return 0


def check_prm(args) -> int:
    """Load or contact the PRM, score a probe, print one PASS/FAIL line per check (``host/check_prm.py``)."""
    from vlmeval_prm.host.check_prm import main as run_check

    return run_check(args.spec, args.options, timeout=args.timeout)


#: The top-level help's closing lines: which command to run first.
START_HERE = """start here:
  vlmeval-prm demo --tiny     the whole pipeline offline on CPU (random tiny models: numbers mean nothing)
  vlmeval-prm demo            Best-of-8 with a policy and PRM trained on CPU (builds them once, ~5 min)
  vlmeval-prm check-prm SPEC  before a real run: is the PRM (LMDeploy server or checkpoint) scoring right?
  python -m vlmeval.run --model <model>-BoN8 --data <dataset>   then: vlmeval-prm report ..."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (where it has one its help does not already state);
    descriptions and the epilog keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _command(sub, name: str, summary: str, func) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is both its entry in the list and its own description."""
    p = sub.add_parser(name, help=summary, description=summary, formatter_class=_Formatter)
    p.set_defaults(func=func)
    return p


def main(argv=None) -> int:
    """Run one command; a closed pipe (``vlmeval-prm models | head``) ends it quietly."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader left: point stdout at /dev/null so the interpreter's final flush cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _root_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vlmevalkit-root",
        help=f"a VLMEvalKit checkout whose run.py to use (default: ${ROOT_ENV}, else the installed vlmeval: "
        "its vlmeval.run module, or the run.py of the checkout it is installed from)",
    )


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlmeval-prm", description=__doc__.split("\n")[0], epilog=START_HERE, formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _command(
        sub, "install-hook", "copy the VLMEvalKit plugin startup hook (.pth) into site-packages again", install_hook
    )
    p.add_argument("--remove", action="store_true")
    p.add_argument("--site-packages", help="target directory (default: this interpreter's purelib)")
    p = _command(sub, "demo", "offline CPU demo: Best-of-N with small local models, then the report", demo)
    p.add_argument(
        "--tiny",
        action="store_true",
        help="the random-weight tiny models on the shipped mini set: the pipeline in seconds, no effect to show",
    )
    p.add_argument(
        "--search", action="store_true", help="Best-of-N, beam search and DVTS at the same N, with their compute"
    )
    p.add_argument("--model", help=f"default {SHAPES_MODEL} ({DEMO_MODEL} with --tiny)")
    p.add_argument("--data", help=f"default {SHAPES_DATA} ({DEMO_DATA} with --tiny)")
    p.add_argument("--work-dir", default="outputs", help="vlmeval.run's --work-dir")
    _root_option(p)
    p.add_argument("extra", nargs=argparse.REMAINDER, help="further arguments for vlmeval.run")
    p = _command(sub, "report", "Best-of-N accuracy by N for every strategy, from stored runs", report)
    p.add_argument("--work-dir", default="outputs", help="vlmeval.run's --work-dir")
    p.add_argument("--model", nargs="+", required=True, help="Best-of-N model names of the runs")
    p.add_argument("--data", nargs="+", required=True, help="dataset names of the runs")
    p.add_argument("--judge", help="judge for the dataset's evaluate() (default: the one the run used)")
    p.add_argument("--judge-args", help="JSON object of further judge settings, as in vlmeval.run")
    p.add_argument(
        "--judge-base-url",
        help="OpenAI-compatible judge server, e.g. http://127.0.0.1:23334/v1 "
        "(default: $OPENAI_API_BASE, as in VLMEvalKit)",
    )
    p.add_argument("--nproc", type=int, help="judge parallelism (default 4)")
    p.add_argument("--ks", type=int, nargs="+", help="values of N (default: 1, 2, 4, ... up to the run's N, and N)")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="SPEC",
        help="also score the run's stored candidates with these scorers (PRM specs, critic:<model>) and compare",
    )
    p.add_argument("--compare-options", help='JSON object: options per --compare spec, {"SPEC": {...}}')
    p.add_argument(
        "--benchmark",
        action="append",
        metavar="SPEC=SCORE",
        help="a --compare scorer's reward-benchmark score (a number, or its VisualProcessBench metrics CSV)",
    )
    p = _command(sub, "serve", "Best-of-N behind an OpenAI-compatible API (/v1/chat/completions)", serve)
    p.add_argument("--model", help="a supported_VLM name (wrapped in Best-of-N) or a -BoN<N> name")
    p.add_argument("--config", help="VLMEvalKit --config JSON; --model picks one of its models")
    p.add_argument("--demo", action="store_true", help=f"serve the tiny offline demo ({DEMO_MODEL}) on CPU")
    p.add_argument("--n", type=int, help="N when --model is a base model (default 8)")
    p.add_argument("--prm", help=f"PRM spec (default: ${SPEC_ENV} or {DEFAULT_PRM_SPEC})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (logged)")
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=8,
        help="requests in work at once with an API policy and a served PRM (else one at a time)",
    )
    p.add_argument("--api-key", help="require this Bearer key (default: $VLMEVAL_PRM_API_KEY; none: open)")
    p.add_argument("--store-dir", help="candidate store folder (default: $VLMEVAL_PRM_STORE_DIR or outputs/<model>)")
    p.add_argument("--allow-remote-images", action="store_true", help="let requests name http(s) image URLs")
    p.add_argument("--image-root", help="let requests name file:// image URLs inside this folder")
    _root_option(p)
    p = _command(
        sub, "prms", "the PRM formats (what a PRM is shown, where its scores are read) and their backends", prms
    )
    p.add_argument(
        "--json", action="store_true", help="a JSON array of {format, default, backends, labels, system_prompt}"
    )
    p = _command(sub, "models", "every VLMEvalKit model name with its Best-of-N sampling route", models)
    p.add_argument("name", nargs="?", help="only names containing this text (case-blind)")
    p.add_argument("--route", help="only names with this route (e.g. batched, sequential, unsupported)")
    p.add_argument("--json", action="store_true", help="a JSON array of {name, class, route, reason[, transformers]}")
    p.add_argument("--use-vllm", action="store_true", help="the routes vlmeval.run --use-vllm gives")
    p = _command(
        sub,
        "check-prm",
        "check a PRM before a run: load or contact it, score a probe, one PASS/FAIL line per check",
        check_prm,
    )
    p.add_argument(
        "spec",
        nargs="?",
        default=os.environ.get(SPEC_ENV) or DEFAULT_PRM_SPEC,
        help=f"PRM spec, e.g. transformers:OpenGVLab/VisualPRM-8B (default: ${SPEC_ENV} or {DEFAULT_PRM_SPEC})",
    )
    p.add_argument("--options", help='JSON object of PRM options (prm_options), e.g. \'{"mode": "chat"}\'')
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for a PRM server's /health (the startup_timeout option; default 30)",
    )
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
