"""``vlmeval-prm check-prm <spec>``: is this PRM ready to score, before a long Best-of-N run?

Loads the PRM (``transformers:...``) or contacts its server(s) (``lmdeploy:http://...``) through the
project's own backends (``vlmeval_prm.prm.validate_spec`` and ``build_scorer``, nothing re-implemented),
renders a probe conversation (a short question about a small generated image, three steps), and prints
one line per check with PASS, FAIL or SKIP and the reason:

* ``spec and options``: ``validate_spec`` (a bad spec or option is bad input: exit 2);
* ``load`` / ``servers``: the checkpoint loads, or every server answers (``/health``, ``/v1/models``);
* ``remote-code buffers``: for a checkpoint loaded with its own modelling code, the non-persistent
  buffers (RoPE caches) equal what the checkpoint's own code computes (``vlmeval_prm.remote_code``);
* ``label tokens``: "+" and "-" are one token each, and distinct, in the PRM's tokenizer (the
  server's, through ``/v1/encode``);
* ``chat template``: a served PRM in chat mode renders the conversation with the PRM's template, not
  LMDeploy's silent ``base`` fallback (the backend's own start-up check);
* ``one score``: the probe candidate scores without error, one finite P(+) in [0, 1] per step.

Then the versions (and what each server's ``/v1/models`` reports) and a verdict. Exit 0 when every
check passes, 1 when one fails, 2 on bad input. API keys never reach the output.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Seconds to wait for a PRM server's /health when neither --timeout nor startup_timeout is given
#: (the backend's own default, 600 s, suits a run that starts with the servers, not a check).
DEFAULT_TIMEOUT = 30.0
PROBE_QUESTION = "What is the area of the green square, whose side is 3 cm?"
PROBE_STEPS = ("The side of the square is 3 cm.", "Its area is 3 * 3 = 9 square centimetres.", "The answer is 9.")
#: Lines of the rendered probe prompt shown, and characters per line.
HEAD_LINES, HEAD_WIDTH = 12, 100

CHECKS = ("spec", "load", "buffers", "labels", "template", "score")
TITLES = {
    "spec": "spec and options",
    "load": "load",
    "buffers": "remote-code buffers",
    "labels": "label tokens",
    "template": "chat template",
    "score": "one score",
}


@dataclass
class Check:
    status: str  # PASS, FAIL or SKIP (not run)
    reason: str


class BadInput(ValueError):
    """The command line names a spec or options that cannot work (exit 2)."""


def parse_options(text: str | None) -> dict:
    """The ``--options`` JSON object; raises ``BadInput`` with what is wrong."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"--options is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(options, dict):
        raise BadInput(f"--options must be a JSON object of PRM options, got {type(options).__name__}: {text!r}")
    return options


class _Printer:
    """stdout, with every secret (API keys) replaced by ***."""

    def __init__(self, secrets):
        self.secrets = sorted({s for s in secrets if isinstance(s, str) and s}, key=len, reverse=True)

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def __call__(self, text: str = "") -> None:
        print(self.clean(text), flush=True)


def _shown_options(options: dict) -> str:
    shown = {k: ("***" if k == "api_key" and v else v) for k, v in options.items()}
    return json.dumps(shown, sort_keys=True) if shown else "none"


def probe_image(folder: str) -> str:
    """A 64x48 PNG: a green square on white (what the probe question asks about)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 48), "white")
    ImageDraw.Draw(image).rectangle((18, 10, 45, 37), fill=(20, 140, 60))
    path = os.path.join(folder, "probe.png")
    image.save(path)
    return path


# -- what a failed start-up was doing ------------------------------------------------------------


def _frames(exc: BaseException) -> set[str]:
    """Function names on the traceback of ``exc`` and of the exceptions it came from (a failure on the
    backend's event loop keeps its own frames when it is raised again in the caller's thread)."""
    names, seen = set(), set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            names.add(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return names


def _is_remote_code_error(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ == "RemoteCodeError":
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def failed_stage(exc: BaseException) -> str:
    """Which check a failure while building the scorer belongs to (by where it was raised)."""
    if _is_remote_code_error(exc):
        return "buffers"
    names = _frames(exc)
    if "_check_chat_template" in names or "_assistant_header" in names:
        return "template"
    if {"label_pattern", "single_token"} & names or ("_connect" in names and isinstance(exc, ValueError)):
        return "labels"
    return "load"


# -- the checks ------------------------------------------------------------------------------------


def _buffer_digests(model) -> dict[str, str]:
    """sha1 of every non-persistent buffer (those ``from_pretrained`` does not load from the weights)."""
    import torch

    digests = {}
    for module_name, module in model.named_modules():
        for name in sorted(getattr(module, "_non_persistent_buffers_set", ())):
            buf = module._buffers.get(name)
            if buf is None or buf.is_meta:
                continue
            data = buf.detach().contiguous().cpu().reshape(-1)
            raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
            digests[f"{module_name}.{name}" if module_name else name] = hashlib.sha1(raw).hexdigest()
    return digests


def _names(items, limit: int = 4) -> str:
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _loading_report(scorer) -> dict | None:
    """What loading reported about the remote code (``prepare_remote_model``'s dict), wherever the
    loader keeps it: ``remote_code_report`` on the scorer, its inputs or its model."""
    for holder in (scorer, getattr(scorer, "inputs", None), getattr(scorer, "model", None)):
        report = getattr(holder, "remote_code_report", None) if holder is not None else None
        if isinstance(report, dict):
            return report
    return None


def _summary(report: dict) -> str:
    parts = []
    for key, value in report.items():
        if isinstance(value, (list, tuple, set, dict)):
            value = _names(value) if value else "none"
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


def check_buffers(scorer, checkpoint: str) -> Check:
    """In-process remote code: run the project's buffer check (``vlmeval_prm.remote_code``: its
    ``repair_buffers``, else ``prepare_remote_model``) on the loaded model once more. It recomputes the
    non-persistent buffers with the checkpoint's own code and repairs what differs: when loading did
    its job nothing changes, and a buffer it changes was wrong after loading. Raises nothing: a
    ``RemoteCodeError`` (a buffer that cannot be verified) is the failure's reason."""
    from vlmeval_prm.prm.hf_backend import _InternVLRemoteInputs, _TextInputs

    model = scorer.model
    if not isinstance(scorer.inputs, (_InternVLRemoteInputs, _TextInputs)) or not getattr(
        model.config, "auto_map", None
    ):
        return Check(
            "PASS",
            f"not applicable: {type(model).__name__} ({type(model).__module__}) is not the checkpoint's own "
            "modelling code (buffers are built by code installed beside transformers)",
        )
    before = _buffer_digests(model)
    kinds = _names(sorted({name.rsplit(".", 1)[-1] for name in before})) or "none"
    try:
        remote_code = importlib.import_module("vlmeval_prm.remote_code")
        # buffers only (what scoring depends on); prepare_remote_model also probes generate
        recheck = getattr(remote_code, "repair_buffers", None) or remote_code.prepare_remote_model
    except (ImportError, AttributeError) as exc:
        return Check(
            "FAIL",
            f"cannot verify the {len(before)} non-persistent buffer(s) of {type(model).__name__} ({kinds}): "
            f"this install has no buffer check ({exc})",
        )
    loaded = _loading_report(scorer)
    try:
        again = recheck(model, checkpoint)
    except Exception as exc:  # RemoteCodeError: the buffers cannot be verified or repaired
        return Check("FAIL", f"{type(exc).__name__}: {exc}")
    changed = sorted(name for name, digest in _buffer_digests(model).items() if before.get(name) != digest)
    if changed:
        return Check(
            "FAIL",
            f"loading left {len(changed)} non-persistent buffer(s) wrong ({_names(changed)}): its scores would "
            "be wrong (here they were repaired for the probe only)",
        )
    detail = f"; loading reported {_summary(loaded)}" if loaded else ""
    if not loaded and isinstance(again, dict) and again:
        detail = f"; checked again: {_summary(again)}"
    return Check(
        "PASS",
        f"{len(before)} non-persistent buffer(s) ({kinds}) equal the checkpoint's own computation (verified){detail}",
    )


def check_labels_local(scorer) -> Check:
    fmt, tok = scorer.fmt, scorer.tokenizer
    if fmt.head:
        return Check(
            "PASS",
            f"no label tokens: the {fmt.name} format reads its {fmt.head} head at each {fmt.marker!r} "
            f"(token {scorer.marker_id} in the PRM's tokenizer)",
        )
    good, bad = scorer.good_id, scorer.bad_id
    unk = getattr(tok, "unk_token_id", None)
    if good == bad:
        return Check("FAIL", f"{fmt.good_token!r} and {fmt.bad_token!r} are the same token ({good})")
    if unk is not None and unk in (good, bad):
        return Check("FAIL", f"{fmt.good_token!r} or {fmt.bad_token!r} is the unknown token ({unk})")
    return Check(
        "PASS",
        f"{fmt.good_token!r} -> {good}, {fmt.bad_token!r} -> {bad}: one token each and distinct in the PRM's "
        "tokenizer, and the label stays one token after the assistant header",
    )


def check_labels_served(scorer) -> Check:
    fmt, seen = scorer.fmt, []
    for server in scorer.servers:
        good, bad = server.pattern[-1], server.bad_id
        if good == bad:
            return Check("FAIL", f"{server.url}: {fmt.good_token!r} and {fmt.bad_token!r} are one token ({good})")
        seen.append((good, bad))
    good, bad = seen[0]
    agree = "" if len(set(seen)) == 1 else f" (the servers disagree: {sorted(set(seen))})"
    return Check(
        "PASS" if not agree else "FAIL",
        f"{fmt.good_token!r} -> {good}, {fmt.bad_token!r} -> {bad} on the server's tokenizer (/v1/encode): one "
        f"token each and distinct, also after the assistant header{agree}",
    )


def check_score(scorer, image: str, n_copies: int = 1) -> tuple[Check, list]:
    """Score the probe (``n_copies`` times at once, so that several servers each get one)."""
    steps = list(PROBE_STEPS)
    try:
        results = scorer.score(PROBE_QUESTION, [image], [steps] * n_copies)
    except Exception as exc:
        return Check("FAIL", f"scoring raised {type(exc).__name__}: {exc}"), []
    for res in results:
        if res.error is not None or res.scores is None:
            return Check("FAIL", f"the probe candidate failed: {res.error}"), results
        if len(res.scores) != len(steps):
            return Check("FAIL", f"{len(res.scores)} scores for {len(steps)} steps"), results
        bad = [s for s in res.scores if not (isinstance(s, float) and math.isfinite(s) and 0.0 <= s <= 1.0)]
        if bad:
            return Check("FAIL", f"P(+) outside [0, 1] or not finite: {bad}"), results
    first = results[0]
    label = {"softmax": "P(class 1)", "sigmoid": "sigmoid(head)"}.get(scorer.fmt.head, f"P({scorer.fmt.good_token})")
    reason = f"{label} per step: {', '.join(f'{s:.4f}' for s in first.scores)} ({len(steps)} steps)"
    if first.bounds:
        n = sum(b is not None for b in first.bounds)
        reason += (
            f"; {n} of them only bounds: a label was not among the server's top logprobs (a trained PRM "
            "puts '+' and '-' on top; raise top_logprobs if this repeats)"
        )
    used = {url for r in results for url in [r.meta.get("server"), *r.meta.get("servers", [])] if url}
    if len(used) > 1:
        spread = max(abs(a - b) for r in results[1:] for a, b in zip(r.scores, first.scores))
        reason += f"; scored on {len(used)} servers, largest difference {spread:.2g}"
    return Check("PASS", reason), results


# -- versions ------------------------------------------------------------------------------------


def package_versions() -> list[str]:
    from importlib import metadata
    from importlib.util import find_spec

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    out = [f"vlmeval-prm {version('vlmeval-prm')}", f"python {sys.version.split()[0]}"]
    out += [f"{name} {version(name)}" for name in ("transformers", "torch")]
    if find_spec("vlmeval") is None:  # found, not imported (importing VLMEvalKit takes seconds)
        out.append("vlmeval not importable")
    else:
        dists = metadata.packages_distributions().get("vlmeval") or ["ms-vlmeval"]
        out.append(f"vlmeval ({dists[0]}) {version(dists[0])}")
    return out


def served_models(urls: list[str], api_key: str | None) -> list[str]:
    """What each server's /v1/models reports (model id and path)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out = []
    for url in urls:
        try:
            reply = httpx.get(f"{url}/v1/models", headers=headers, timeout=5.0)
            reply.raise_for_status()
            cards = reply.json().get("data") or []
            shown = [
                f"{c.get('id')!r}" + (f" (root {c['root']})" if c.get("root") and c["root"] != c.get("id") else "")
                for c in cards
            ]
            out.append(f"{url} /v1/models: {', '.join(shown) or 'no model'}")
        except (httpx.HTTPError, ValueError) as exc:
            out.append(f"{url} /v1/models: no answer ({type(exc).__name__}: {exc})")
    return out


# -- the command -----------------------------------------------------------------------------------


def _prompt_head(text: str, tokens: int | None, how: str, system_prompt: str | None) -> list[str]:
    """The rendered probe prompt's first lines, the system prompt cut to its start."""
    if system_prompt and len(system_prompt) > HEAD_WIDTH // 2:
        text = text.replace(system_prompt, system_prompt[: HEAD_WIDTH // 2] + "[...]", 1)
    count = f"{tokens} tokens" if tokens is not None else "token count unknown"
    lines = [f"probe prompt ({how}; {count}), head:"]
    for line in text.splitlines()[:HEAD_LINES]:
        lines.append("  | " + (line if len(line) <= HEAD_WIDTH else line[: HEAD_WIDTH - 5] + "[...]"))
    return lines


def run(spec: str, options: dict, timeout: float | None = None, say: Callable[[str], None] | None = None) -> int:
    """Check ``spec`` with ``options``; print the report with ``say``; the exit code."""
    from vlmeval_prm.loading import resolve_path
    from vlmeval_prm.prm import build_scorer, parse_spec, validate_spec

    say = say or print
    results: dict[str, Check] = {}
    titles = dict(TITLES)

    def line(name: str) -> None:
        check = results[name]
        say(f"{check.status:<4}  {titles[name]:<19}  {check.reason}")

    if spec.startswith("tiny:"):  # the tiny models' own name, as loading.resolve_path reads it
        spec = f"transformers:{spec}"
    say(f"vlmeval-prm check-prm {spec}")
    try:
        backend, target = parse_spec(spec)
        if backend == "lmdeploy":
            options = dict(options)
            if timeout is not None or "startup_timeout" not in options:
                options["startup_timeout"] = timeout if timeout is not None else DEFAULT_TIMEOUT
        validate_spec(spec, options)
    except ValueError as exc:
        results["spec"] = Check("FAIL", str(exc))
        line("spec")
        say("verdict: FAIL - the spec or its options are invalid (bad input: nothing was loaded)")
        return 2
    served = backend == "lmdeploy"
    if served:
        from vlmeval_prm.prm.lmdeploy_backend import server_urls

        urls = server_urls(target)
        titles["load"] = "servers"
        where = f"{len(urls)} server(s), waiting up to {options['startup_timeout']:g}s for /health"
    else:
        where = f"checkpoint {target}"
    results["spec"] = Check("PASS", f"{backend} backend, {where}; options: {_shown_options(options)}")
    line("spec")

    head: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vlmeval_prm_check_") as folder:
        image = probe_image(folder)
        start = time.monotonic()
        try:
            scorer = build_scorer(spec, **options)
        except Exception as exc:
            stage = failed_stage(exc)
            results[stage] = Check("FAIL", f"{type(exc).__name__}: {exc}" if stage == "load" else str(exc))
            if served:
                results["buffers"] = _SERVED_BUFFERS
                if stage in ("labels", "template"):  # the backend checks those once a server has answered
                    results["load"] = Check("PASS", f"answered /health and /v1/models (then the {titles[stage]} check)")
            for name in CHECKS[1:]:
                results.setdefault(name, Check("SKIP", f"not checked: start-up stopped at the {titles[stage]} check"))
        else:
            try:
                head = _examine(scorer, results, served, resolve_path(target), image, time.monotonic() - start)
            finally:
                scorer.close()
        for name in CHECKS[1:]:
            line(name)
    for text in head:
        say(text)
    say("versions: " + ", ".join(package_versions()))
    if served:
        for text in served_models(urls, options.get("api_key") or os.environ.get("LMDEPLOY_API_KEY")):
            say("  " + text)
    failed = [titles[n] for n in CHECKS if results[n].status == "FAIL"]
    if failed:
        say(f"verdict: FAIL - {len(failed)} check(s) failed ({', '.join(failed)}); fix this before a Best-of-N run")
        return 1
    say(f"verdict: PASS - every check passed: {spec} is ready to score")
    return 0


_SERVED_BUFFERS = Check("PASS", "not applicable: the server runs the model with LMDeploy's own implementation")


def _examine(scorer, results: dict[str, Check], served: bool, checkpoint: str, image: str, seconds: float) -> list:
    """Fill in the checks of a built scorer; the probe prompt's head."""

    identity = getattr(scorer, "identity", "?")
    if served:
        from vlmeval_prm.prm.lmdeploy_backend import IMAGE_TOKEN

        ready = [s.url for s in scorer.servers]
        missing = [u for u in scorer.urls if u not in ready]
        why = getattr(scorer, "_failures", {})
        how = (
            "one /generate request per candidate (prompt logprobs)"
            if scorer.mode == "generate"
            else "chat fallback, one /v1/chat/completions request per step"
        )
        if missing:
            results["load"] = Check(
                "FAIL",
                f"{len(ready)} of {len(scorer.urls)} servers ready; "
                + "; ".join(f"{u}: {why.get(u, 'not ready in time')}" for u in missing),
            )
        else:
            results["load"] = Check(
                "PASS", f"{len(ready)} server(s) ready in {seconds:.1f}s, scorer {identity}, mode {scorer.mode}: {how}"
            )
        results["buffers"] = _SERVED_BUFFERS
        results["labels"] = check_labels_served(scorer)
        results["template"] = (
            Check(
                "PASS",
                "every server renders a probe conversation into as many tokens as the PRM's template does "
                "(the backend's start-up check: not LMDeploy's 'base' fallback)",
            )
            if scorer.mode == "chat"
            else Check("PASS", "not applicable: in /generate mode the plugin renders the prompt itself")
        )
        results["score"], scored = check_score(scorer, image, n_copies=max(1, len(ready)))
        tokens = scored[0].meta.get("prompt_tokens") if scored else None
        if scorer.mode == "generate":
            text = scorer.fmt.render(PROBE_QUESTION, list(PROBE_STEPS), 1, image=IMAGE_TOKEN + "\n")
            how = "as sent to /generate; the server's token count"
        else:
            text = scorer.fmt.render(PROBE_QUESTION, list(PROBE_STEPS), 1)
            how = (
                "the PRM's template, which the server's must match; the server's token counts of the "
                f"{len(PROBE_STEPS)} chat requests summed"
            )
        return _prompt_head(text, tokens, how, scorer.fmt.system_prompt)

    from vlmeval_prm.prm.hf_backend import TransformersPRM

    if not isinstance(scorer, TransformersPRM):  # a backend this command does not know the insides of
        results["load"] = Check("PASS", f"built {type(scorer).__name__} in {seconds:.1f}s, scorer {identity}")
        for name in ("buffers", "labels", "template"):
            results[name] = Check("SKIP", f"not checked for {type(scorer).__name__}")
        results["score"], _ = check_score(scorer, image)
        return []
    import torch

    param = next(scorer.model.parameters())
    module = type(scorer.model).__module__
    remote = module.startswith("transformers_modules")  # where transformers keeps remote code
    package = not remote and not module.startswith("transformers.")
    kind = "the checkpoint's own modelling code" if remote else f"the package {module}" if package else "transformers"
    results["load"] = Check(
        "PASS",
        f"{type(scorer.model).__name__} ({kind}) loaded in {seconds:.1f}s on {param.device}, "
        f"{str(param.dtype).removeprefix('torch.')}; scorer {identity}",
    )
    results["buffers"] = check_buffers(scorer, checkpoint)
    results["labels"] = check_labels_local(scorer)
    header = scorer.fmt.template.header("assistant") if remote else None
    results["template"] = Check(
        "PASS",
        f"not applicable in-process: the plugin renders the checkpoint's conversation template (assistant header "
        f"{header!r})"
        if remote
        else "not applicable in-process: the checkpoint's own chat template renders the prompt"
        + ("" if package else " (its assistant header was found)"),
    )
    results["score"], _ = check_score(scorer, image)
    text = scorer.render(PROBE_QUESTION, list(PROBE_STEPS), 1)
    tokens = None
    with contextlib.suppress(Exception), torch.inference_mode():
        tokens = int(scorer.inputs.encode([text], scorer.inputs.images([image]))["attention_mask"].sum())
    return _prompt_head(text, tokens, "images expanded in the count", scorer.fmt.system_prompt)


def main(spec: str, options_json: str | None = None, timeout: float | None = None) -> int:
    """The ``check-prm`` command: 2 on bad input (message on stderr), else ``run``'s code."""
    try:
        options = parse_options(options_json)
        if timeout is not None and not timeout > 0:
            raise BadInput(f"--timeout must be a positive number of seconds, got {timeout}")
    except BadInput as exc:
        print(f"vlmeval-prm check-prm: {exc}", file=sys.stderr)
        return 2
    say = _Printer([options.get("api_key"), os.environ.get("LMDEPLOY_API_KEY")])
    return run(spec, options, timeout=timeout, say=say)
