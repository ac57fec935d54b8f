"""VLMEvalKit glue around a run: where the candidate store goes, and whole prediction rows on reruns.

VLMEvalKit hands a model only (message, dataset name). The plugin wraps
``vlmeval.inference.infer_data`` to note its ``work_dir`` and ``model_name`` for the duration of the
call (process-wide, so ``--api-nproc`` worker threads see it too), and ms-vlmeval's ``--api-mode``
pipeline (``vlmeval.inference_api.APIEvalPipeline``) for its run.

A rerun mixes two kinds of rows: VLMEvalKit reloads the kept predictions of the last run as plain
text (``infer_data_job``'s ``_PREV.pkl``: the ``prediction`` column only) while the rows it retries
come back from ``BestOfN.generate`` as ``{"prediction", "extra_records"}``. Its merge keeps the
records only when every row is one, so it wrote ``str(dict)`` as the prediction and dropped the
``extra_records`` column. ``whole_records`` gives every row back its record first.

A ``kill -9`` while VLMEvalKit writes its prediction or partial-result files in place leaves them
unreadable, and every later run would stop on them: ``set_aside_torn`` moves them out of the way.
"""

from __future__ import annotations

import functools
import inspect
import os

from vlmeval_prm.constants import STORE_DIR_ENV
from vlmeval_prm.logs import get_logger
from vlmeval_prm.store.paths import EVAL_ID, store_file

log = get_logger(__name__)

CURRENT: dict = {}

#: The keys of a row VLMEvalKit keeps whole (``vlmeval/inference.py``: ``_is_structured_record``).
RECORD_KEYS = ("prediction", "extra_records")


def model_folder(work_dir: str, model_name: str | None) -> str:
    """The folder a model's store lives in: ``work_dir`` itself, or its parent when ``work_dir`` is a
    run folder ``<model>/<eval_id>`` (upstream run.py, ms-vlmeval ``--api-mode``). A rerun gets a
    new eval_id folder and ``--reuse`` copies only the prediction file into it, so a store kept per
    run folder would be lost to it (every candidate sampled again)."""
    head, tail = os.path.split(os.path.normpath(work_dir))
    if EVAL_ID.match(tail) and (model_name is None or os.path.basename(head) == model_name):
        return head
    return work_dir


def store_path(model_name: str, dataset: str | None) -> str:
    """The store of the current VLMEvalKit run (in ``model_folder`` of run.py's pred_root); outside a
    run the folder is ``$VLMEVAL_PRM_STORE_DIR`` or ``./outputs/<model>``."""
    name = CURRENT.get("model_name") or model_name
    if CURRENT.get("work_dir"):
        return store_file(model_folder(CURRENT["work_dir"], name), name, dataset)
    return store_file(os.environ.get(STORE_DIR_ENV) or os.path.join("outputs", model_name), name, dataset)


def is_record(value) -> bool:
    return isinstance(value, dict) and all(k in value for k in RECORD_KEYS)


def _previous_records(path: str | None) -> dict:
    """str(index) -> extra_records of a prediction file written before (the last run's rows)."""
    if not path or not os.path.exists(path):
        return {}
    from vlmeval.smp import load

    try:
        table = load(path)
    except Exception as exc:  # an unreadable old file only costs the records it held
        log.warning("cannot read %s for its extra_records: %s: %s", path, type(exc).__name__, exc)
        return {}
    if "extra_records" not in getattr(table, "columns", ()):
        return {}
    return {str(i): r for i, r in zip(table["index"], table["extra_records"]) if isinstance(r, str) and r}


def is_best_of_n(model, model_name: str | None = None) -> bool:
    """A built BestOfN, or a name VLMEvalKit will build one from (``infer_data`` returns the name
    unbuilt when every row was already done)."""
    if isinstance(model, str):
        from vlmeval.config import supported_VLM

        model = getattr(supported_VLM.get(model_name or model), "func", None)
        return getattr(model, "__name__", None) == "BestOfN"  # plugin.LazyClass / RefuseToBuild
    return type(model).__name__ == "BestOfN"


def whole_records(results: dict, previous_file: str | None, best_of_n: bool = False) -> dict:
    """``results`` (index -> prediction) with every row a record, when any row is one or they are a
    Best-of-N model's (an identical rerun reloads every row as text).

    A plain-text row takes its ``extra_records`` from ``previous_file`` (the prediction file it was
    reloaded from); a row that has none there keeps its text with no record (``extra_records`` None:
    the report counts it as dropped), and is logged.
    Other models' results come back unchanged.
    """
    if all(is_record(v) for v in results.values()) or not (best_of_n or any(map(is_record, results.values()))):
        return results
    previous = _previous_records(previous_file)
    out, missing = {}, 0
    for idx, value in results.items():
        if is_record(value):
            out[idx] = value
        else:
            record = previous.get(str(idx))
            missing += record is None
            out[idx] = {"prediction": value, "extra_records": record}
    if missing:
        log.warning(
            "%d kept predictions have no Best-of-N record in %s; the report counts them as dropped",
            missing,
            previous_file,
        )
    return out


def set_aside_torn(work_dir: str, model_name: str, dataset_name: str) -> list[str]:
    """Rename (``.torn``) the files of this run VLMEvalKit would load and cannot: written whole by
    ``dump`` but cut short by a ``kill -9`` (VLMEvalKit writes them in place). Unread, each would stop
    every later run; what they held is in the candidate store, so the run rebuilds it without
    sampling or scoring again. Paths as ``vlmeval/inference.py`` names them; rank 0 owns the shared
    ones. Returns the paths set aside."""
    from vlmeval.smp import get_pred_file_path, get_rank_and_world_size, load

    rank, world_size = get_rank_and_world_size()
    paths = [os.path.join(work_dir, f"{rank}{world_size}_{dataset_name}.pkl")]
    if rank == 0:
        paths += [
            get_pred_file_path(work_dir, model_name, dataset_name, use_env_format=True),
            os.path.join(work_dir, f"{model_name}_{dataset_name}_PREV.pkl"),
            os.path.join(work_dir, f"{model_name}_{dataset_name}_checkpoint.pkl"),
        ]
    torn = []
    for path in filter(os.path.exists, paths):
        try:
            load(path)
        except Exception as exc:
            os.replace(path, f"{path}.torn")
            log.warning(
                "%s cannot be read (%s: %s), as a killed run leaves it; set aside as %s.torn",
                path,
                type(exc).__name__,
                exc,
                path,
            )
            torn.append(path)
    return torn


def wrap_infer_data_job(infer_data_job):
    """``infer_data_job`` that first sets aside the files a killed run left unreadable."""
    if getattr(infer_data_job, "vlmeval_prm_wrapped", False):
        return infer_data_job
    signature = inspect.signature(infer_data_job)

    @functools.wraps(infer_data_job)
    def wrapper(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs).arguments
        set_aside_torn(bound["work_dir"], bound["model_name"], bound["dataset"].dataset_name)
        return infer_data_job(*args, **kwargs)

    wrapper.vlmeval_prm_wrapped = True
    return wrapper


def wrap_infer_data(infer_data):
    """``infer_data`` noting where the run writes, then leaving its results file (one per rank,
    ``out_file``) with every row whole before ``infer_data_job`` merges the ranks."""
    if getattr(infer_data, "vlmeval_prm_wrapped", False):
        return infer_data
    signature = inspect.signature(infer_data)

    @functools.wraps(infer_data)
    def wrapper(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs).arguments
        CURRENT.update(work_dir=bound.get("work_dir"), model_name=bound.get("model_name"))
        try:
            model = infer_data(*args, **kwargs)
        finally:
            CURRENT.clear()
        _fix_results_file(bound, model)
        return model

    wrapper.vlmeval_prm_wrapped = True
    return wrapper


def _fix_results_file(bound: dict, model) -> None:
    from vlmeval.smp import dump, get_pred_file_path, load

    out_file, dataset = bound.get("out_file"), bound.get("dataset")
    if not out_file or dataset is None or not os.path.exists(out_file):
        return
    results = load(out_file)
    if not isinstance(results, dict):
        return
    previous = get_pred_file_path(bound["work_dir"], bound["model_name"], dataset.dataset_name, use_env_format=True)
    fixed = whole_records(results, previous, is_best_of_n(model, bound.get("model_name")))
    if fixed is not results:
        dump(fixed, out_file)


def wrap_api_pipeline(pipeline_cls) -> None:
    """ms-vlmeval ``--api-mode``: note where the run writes when the pipeline is built, and save the
    final prediction file with a text ``prediction`` and an ``extra_records`` column (the pipeline
    itself writes a row's value as it comes, so a record became its ``str()``)."""
    if getattr(pipeline_cls, "vlmeval_prm_wrapped", False):
        return
    init, save = pipeline_cls.__init__, pipeline_cls._save_final_result

    @functools.wraps(init)
    def wrapped_init(self, dataset_configs, *args, **kwargs):
        init(self, dataset_configs, *args, **kwargs)
        if dataset_configs:  # api-mode runs one model per process
            cfg = dataset_configs[0]
            CURRENT.update(work_dir=str(cfg.work_dir), model_name=cfg.model_name)

    @functools.wraps(save)
    def wrapped_save(self, dataset_name, *args, **kwargs):
        cfg = self.states[dataset_name]
        results = whole_records(dict(cfg.results_dict), str(cfg.result_file), is_best_of_n(cfg.model_obj))
        if any(is_record(v) for v in results.values()):
            data = cfg.dataset_obj.data
            data["extra_records"] = [
                results[str(i)]["extra_records"] if str(i) in results else None for i in data["index"]
            ]
            cfg.results_dict.update({k: v["prediction"] for k, v in results.items()})
        return save(self, dataset_name, *args, **kwargs)

    pipeline_cls.__init__, pipeline_cls._save_final_result = wrapped_init, wrapped_save
    pipeline_cls.vlmeval_prm_wrapped = True
