"""VisualProcessBench (VisualPRM, arXiv 2503.10291) as a VLMEvalKit dataset: does a PRM or an MLLM
critic find the wrong steps of a given solution?

The benchmark is not downloadable from here, so the official release (``test.jsonl`` and its images)
is converted once into VLMEvalKit's TSV form in ``$LMUData``. Where the release is looked for:

1. ``$VISUALPROCESSBENCH_ROOT``: the release folder (``test.jsonl`` plus the image files, or zips of
   the image folders next to it) or a zip of the whole release;
2. otherwise ``$LMUData/VisualProcessBench/``: the same folder layout, or one zip of the release in it.

Image paths in ``test.jsonl`` are relative to the folder that holds it. To rebuild after changing the
release, delete ``$LMUData/VisualProcessBench*.tsv``.

``VisualProcessBench_MINI`` is a quick subset: the first ``MINI_PER_SOURCE`` samples of every
``data_source``, in release order (deterministic).

Two kinds of predictions are scored (see :mod:`vlmeval_prm.datasets.process_metric` for the metric and how
failures count): a JSON list of per-step P(+) from a PRM (``vlmeval_prm.host.prm_judge.PRMJudge``), or
the text reply of any other model answering the critic prompt built here
(:mod:`vlmeval_prm.prm.critic`).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import posixpath
import zipfile
from collections.abc import Iterable

import pandas as pd
from PIL import Image
from vlmeval.dataset.image_base import ImageBaseDataset
from vlmeval.smp import LMUDataRoot, dump, get_intermediate_file_path, load
from vlmeval.smp.file import INFER_FAIL_MSG

from vlmeval_prm.datasets.process_metric import DEFAULT_THRESHOLD, LABELS, summarize
from vlmeval_prm.logs import get_logger
from vlmeval_prm.prm.critic import build_critic_prompt, parse_verdicts

log = get_logger(__name__)

FULL = "VisualProcessBench"
MINI = "VisualProcessBench_MINI"
MINI_PER_SOURCE = 20
ROOT_ENV = "VISUALPROCESSBENCH_ROOT"
JSONL = "test.jsonl"
TSV_COLUMNS = ["index", "image", "question", "answer", "steps", "labels", "data_source", "policy_model"]
_MAX_LISTED_ERRORS = 20


class ReleaseError(ValueError):
    """The release is missing or has invalid samples; the message says where and which rows."""


# ----------------------------------------------------------------------------------- release reading


class _Release:
    """``test.jsonl`` and image bytes from a release folder or zip, addressed by release-relative path."""

    def __init__(self, path: str):
        self.path = path
        self._zips: list[zipfile.ZipFile] = []
        # (zip, its member names, member prefix, release folder it stands for):
        # release path "<mount>x" is member "<prefix>x".
        self._zip_sources: list[tuple[zipfile.ZipFile, set[str], str, str]] = []
        if os.path.isdir(path):
            self._dir: str | None = path
            for name in sorted(os.listdir(path)):
                if name.lower().endswith(".zip"):
                    # A zip beside test.jsonl holds image folders, or is the image folder it is named after.
                    zf, names = self._open_zip(os.path.join(path, name))
                    self._zip_sources += [(zf, names, "", ""), (zf, names, "", os.path.splitext(name)[0] + "/")]
        else:
            self._dir = None
            zf, names = self._open_zip(path)
            member = _find_jsonl(names, path)
            prefix = posixpath.dirname(member) + "/" if "/" in member else ""
            self._zip_sources.append((zf, names, prefix, ""))

    def _open_zip(self, path: str) -> tuple[zipfile.ZipFile, set[str]]:
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise ReleaseError(f"{path} is not a readable zip file: {exc}") from exc
        self._zips.append(zf)
        return zf, set(zf.namelist())

    def jsonl_lines(self) -> list[str]:
        if self._dir is not None:
            with open(os.path.join(self._dir, JSONL), encoding="utf-8") as f:
                return f.read().splitlines()
        zf, _, prefix, _ = self._zip_sources[0]
        return zf.read(prefix + JSONL).decode("utf-8").splitlines()

    def image_bytes(self, rel: str) -> bytes | None:
        if self._dir is not None and os.path.isfile(os.path.join(self._dir, rel)):
            with open(os.path.join(self._dir, rel), "rb") as f:
                return f.read()
        for zf, names, prefix, mount in self._zip_sources:
            member = prefix + rel[len(mount) :]
            if rel.startswith(mount) and member in names:
                return zf.read(member)
        return None

    def close(self) -> None:
        for zf in self._zips:
            zf.close()


def _find_jsonl(names: set[str], path: str) -> str:
    """The shallowest ``test.jsonl`` in the zip; the folder holding it is the release root."""
    found = sorted((n for n in names if posixpath.basename(n) == JSONL), key=lambda n: (n.count("/"), n))
    if not found:
        raise ReleaseError(f"{path} has no {JSONL}; expected a zip of the VisualProcessBench release")
    if len(found) > 1 and found[0].count("/") == found[1].count("/"):
        raise ReleaseError(f"{path} has several {JSONL} at the same depth: {found[:3]}")
    return found[0]


def _missing_release_message() -> str:
    target = os.path.join(LMUDataRoot(), FULL)
    return (
        f"VisualProcessBench release not found. Get the official release (test.jsonl and its images, "
        f"https://huggingface.co/datasets/OpenGVLab/VisualProcessBench) and put test.jsonl with the image "
        f"folder(s) beside it in {target}/ (image paths in test.jsonl are relative to that folder; a zip of "
        f"the release there also works), or set {ROOT_ENV} to the release folder or zip."
    )


def find_release() -> _Release:
    """Open the release at ``$VISUALPROCESSBENCH_ROOT``, else in ``$LMUData/VisualProcessBench/``."""
    env = os.environ.get(ROOT_ENV)
    if env:
        if os.path.isdir(env) and os.path.isfile(os.path.join(env, JSONL)):
            return _Release(env)
        if os.path.isfile(env) and env.lower().endswith(".zip"):
            return _Release(env)
        raise ReleaseError(
            f"{ROOT_ENV}={env} is neither a folder containing {JSONL} nor a .zip file. " + _missing_release_message()
        )
    folder = os.path.join(LMUDataRoot(), FULL)
    if os.path.isfile(os.path.join(folder, JSONL)):
        return _Release(folder)
    zips = sorted(n for n in os.listdir(folder) if n.lower().endswith(".zip")) if os.path.isdir(folder) else []
    if len(zips) == 1:
        return _Release(os.path.join(folder, zips[0]))
    if len(zips) > 1:
        raise ReleaseError(
            f"{folder} holds several zips {zips} and no {JSONL}; keep one release zip, or "
            f"unpack it there. " + _missing_release_message()
        )
    raise ReleaseError(_missing_release_message())


# ------------------------------------------------------------------------------ release -> TSV rows


def _label(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in LABELS:
        raise ValueError(f"unknown label {value!r} (expected 1, 0 or -1)")
    return int(value)


def _image_b64(release: _Release, rel) -> str:
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"image path {rel!r} is not a non-empty string")
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if norm.startswith("../") or norm == ".." or posixpath.isabs(norm):
        raise ValueError(f"image path {rel!r} points outside the release")
    data = release.image_bytes(norm)
    if data is None:
        raise ValueError(f"image {rel!r} not found under {release.path}")
    try:
        Image.open(io.BytesIO(data)).verify()
    except Exception as exc:
        raise ValueError(f"image {rel!r} is not a readable image: {exc}") from exc
    # The release's own bytes, not re-encoded: VLMEvalKit's encoder would re-save as lossy JPEG and
    # upscale small images; decoding for the model (ImageBaseDataset.dump_image) reads any format.
    return base64.b64encode(data).decode("ascii")


def _convert_sample(release: _Release, obj) -> dict:
    """One TSV row (without ``index``) from one ``test.jsonl`` object; ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    response = obj.get("response")
    if isinstance(response, str):  # some exports store the response object as a JSON string
        response = json.loads(response)
    if not isinstance(response, dict) or "steps" not in response or "process_correctness" not in response:
        raise ValueError("missing response.steps / response.process_correctness")
    steps, labels = response["steps"], response["process_correctness"]
    if not isinstance(steps, list) or not isinstance(labels, list):
        raise ValueError("response.steps and response.process_correctness must be lists")
    if len(steps) != len(labels):
        raise ValueError(f"{len(steps)} steps but {len(labels)} labels (response.process_correctness)")
    if not steps:
        raise ValueError("no steps")
    if not all(isinstance(s, str) for s in steps):
        raise ValueError("every step must be a string")
    labels = [_label(v) for v in labels]
    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("missing question")
    source = obj.get("data_source")
    if not isinstance(source, str) or not source:
        raise ValueError("missing data_source")
    images = obj.get("image")
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not images:
        raise ValueError("no image (every VisualProcessBench sample has at least one)")
    encoded = [_image_b64(release, rel) for rel in images]
    return {
        "image": encoded[0] if len(encoded) == 1 else json.dumps(encoded),
        "question": question,
        "answer": "" if obj.get("answer") is None else str(obj["answer"]),
        "steps": json.dumps(steps, ensure_ascii=False),
        "labels": json.dumps(labels),
        "data_source": source,
        "policy_model": str(obj.get("policy_model") or ""),
    }


def release_to_frame(release: _Release) -> pd.DataFrame:
    """Validate every sample and build the TSV frame; ``index`` is the 0-based sample order.

    All invalid samples are reported at once, each by its line number in test.jsonl (and ``id`` if
    the sample has one).
    """
    rows, errors = [], []
    for line_no, line in enumerate(release.jsonl_lines(), 1):
        if not line.strip():
            continue
        obj = None
        try:
            obj = json.loads(line)
            rows.append({"index": len(rows), **_convert_sample(release, obj)})
        except (ValueError, TypeError) as exc:
            sample_id = f" (id {obj['id']!r})" if isinstance(obj, dict) and "id" in obj else ""
            errors.append(f"line {line_no}{sample_id}: {exc}")
    if errors:
        listed = "\n  ".join(errors[:_MAX_LISTED_ERRORS])
        more = f"\n  ... and {len(errors) - _MAX_LISTED_ERRORS} more" if len(errors) > _MAX_LISTED_ERRORS else ""
        raise ReleaseError(f"{release.path}/{JSONL}: {len(errors)} invalid sample(s):\n  {listed}{more}")
    if not rows:
        raise ReleaseError(f"{release.path}/{JSONL} has no samples")
    return pd.DataFrame(rows, columns=TSV_COLUMNS)


def mini_subset(data: pd.DataFrame, per_source: int) -> pd.DataFrame:
    """The first ``per_source`` samples (by index) of every data_source, in index order."""
    ordered = data.sort_values("index", kind="stable")
    return ordered.groupby("data_source", sort=False).head(per_source).reset_index(drop=True)


def _write_tsv(frame: pd.DataFrame, path: str) -> None:
    """Write then rename, so an interrupted conversion never leaves a TSV that looks finished."""
    partial = path[: -len(".tsv")] + ".partial.tsv"
    dump(frame, partial)
    if not os.path.isfile(partial):  # vlmeval's dump falls back to .pkl on errors
        raise RuntimeError(f"could not write {partial}")
    os.replace(partial, path)


def ensure_tsv(name: str) -> str:
    """Path of ``$LMUData/<name>.tsv``, converting the release only when the TSV does not exist yet."""
    path = os.path.join(LMUDataRoot(), f"{name}.tsv")
    if os.path.isfile(path):
        return path
    if name == MINI:
        frame = mini_subset(load(ensure_tsv(FULL)), MINI_PER_SOURCE)
    else:
        release = find_release()
        try:
            frame = release_to_frame(release)
        finally:
            release.close()
    _write_tsv(frame, path)
    return path


# ------------------------------------------------------------------------------- prediction parsing


def is_failure(prediction) -> bool:
    """Inference produced no usable text: VLMEvalKit's failure marker, or nothing at all."""
    if prediction is None or (isinstance(prediction, float) and math.isnan(prediction)):
        return True
    text = str(prediction).strip()
    return not text or INFER_FAIL_MSG in text


def as_number_list(prediction) -> list[float] | None:
    """The prediction as a JSON list of numbers, or None when it is not one."""
    try:
        value = json.loads(str(prediction))
    except ValueError:
        return None
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return None
    return [float(x) for x in value]


def detect_kind(predictions: Iterable) -> str:
    """ "score" when every non-failed prediction is a JSON list of numbers, else "critic"."""
    usable = [p for p in predictions if not is_failure(p)]
    return "score" if usable and all(as_number_list(p) is not None for p in usable) else "critic"


def parse_prediction(prediction, n_steps: int, kind: str) -> tuple[list | None, str]:
    """(per-step predictions or None, status). Status is "ok" or why the sample counts as failed."""
    if is_failure(prediction):
        return None, "inference failed"
    if kind == "critic":
        labels = parse_verdicts(str(prediction), n_steps)
        return (labels, "ok") if labels is not None else (None, "unparseable reply")
    scores = as_number_list(prediction)
    if scores is None:
        return None, "invalid scores: not a JSON list of numbers"
    if len(scores) != n_steps:
        return None, f"invalid scores: {len(scores)} for {n_steps} steps"
    if not all(0.0 <= s <= 1.0 for s in scores):  # also rejects NaN
        return None, "invalid scores: outside [0, 1]"
    return scores, "ok"


# ------------------------------------------------------------------------------------------ dataset


class VisualProcessBench(ImageBaseDataset):
    """Step-correctness benchmark. Columns: index, image, question, answer, steps and labels (JSON
    lists), data_source, policy_model. ``evaluate`` reports macro F1 per data_source and Overall."""

    TYPE = "PRM"
    MODALITY = "IMAGE"
    DATASET_URL = {FULL: "", MINI: ""}
    DATASET_MD5: dict = {}
    # VLMEvalKit's run summary looks for these in the ``result`` column of the ``*_result`` file:
    # predictions the rules could not read show up as its judge failure rate (inference failures
    # are its infer failure rate).
    JUDGE_FAIL_MARKERS = ("unparseable reply", "invalid scores")

    def load_data(self, dataset):
        self.data_path = ensure_tsv(dataset)
        return load(self.data_path)

    def post_build(self, dataset):
        # The MINI subset keeps the full benchmark's indices: share its dumped images.
        self.img_root = os.path.join(LMUDataRoot(), "images", FULL)

    def build_prompt(self, line):
        """The critic prompt for a generic model: the images, then the question and numbered steps."""
        if isinstance(line, int):
            line = self.data.iloc[line]
        msgs = [dict(type="image", value=p) for p in self.dump_image(line)]
        msgs.append(dict(type="text", value=build_critic_prompt(str(line["question"]), json.loads(line["steps"]))))
        return msgs

    def evaluate(self, eval_file, **judge_kwargs):
        """Macro F1 per data_source and Overall; writes ``*_metrics`` and ``*_<kind>_result`` files.

        judge_kwargs: ``threshold`` (a PRM step is correct when P(+) > threshold, default 0.5; e.g.
        ``--judge-args '{"threshold": 0.85}'``) and ``kind`` ("score" or
        "critic"; detected from the predictions when absent). Other keys are ignored.
        """
        threshold = float(judge_kwargs.get("threshold", DEFAULT_THRESHOLD))
        data = load(eval_file)
        gold = self.data.set_index("index")
        unknown = [i for i in data["index"] if i not in gold.index]
        if unknown:
            raise ValueError(f"{eval_file}: indices not in {self.dataset_name}: {unknown[:10]}")
        kind = judge_kwargs.get("kind") or detect_kind(data["prediction"])
        if kind not in ("score", "critic"):
            raise ValueError(f"kind must be 'score' or 'critic', got {kind!r}")
        labels = [json.loads(gold.at[i, "labels"]) for i in data["index"]]
        parsed = [parse_prediction(p, len(lab), kind) for p, lab in zip(data["prediction"], labels)]
        samples = pd.DataFrame(
            {
                "data_source": [gold.at[i, "data_source"] for i in data["index"]],
                "labels": labels,
                "pred": [p for p, _ in parsed],
            },
            index=list(data["index"]),
        )
        summary = summarize(samples, "score" if kind == "score" else "label", threshold)

        details = pd.DataFrame(
            {
                "index": list(data["index"]),
                "data_source": samples["data_source"].tolist(),
                "labels": [json.dumps(x) for x in labels],
                "prediction": data["prediction"].tolist(),
                "parsed": [json.dumps(p) if p is not None else "" for p, _ in parsed],
                "result": [s for _, s in parsed],
            }
        )
        dump(details, get_intermediate_file_path(eval_file, f"_{kind}_result"))
        dump(summary, get_intermediate_file_path(eval_file, "_metrics"))
        _log_summary(self.dataset_name, kind, summary, details)
        return summary


def _log_summary(name: str, kind: str, summary: pd.DataFrame, details: pd.DataFrame) -> None:
    failures = details.loc[details["result"] != "ok", "result"].value_counts()
    failed = ", ".join(f"{n} {why}" for why, n in failures.items()) or "none"
    what = (
        f"PRM scores, a step is correct when P(+) > {summary['threshold'].iloc[-1]:g}"
        if kind == "score"
        else "critic replies"
    )
    log.info(
        "%s (%s), macro F1 in %%; failed samples: %s (excluded from F1, counted wrong in F1_pessimistic)\n%s",
        name,
        what,
        failed,
        summary.round(2).to_string(index=False),
    )
