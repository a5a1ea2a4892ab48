"""`curate contamination`: which benchmark items a training corpus holds, and which documents hold them.

Everything that can be wrong with the input (benchmarks and their fields, the corpus, settings, the output and
clean-copy folders) is checked before AUDIT is created. A rerun with the same request resumes (finished datatrove
tasks are skipped; a finished audit is returned as it is); a rerun with another request into the same AUDIT is
refused, naming what changed, unless told to `overwrite` (AUDIT, and the clean copy, are then removed first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stride_engine.artifacts import atomic_write_text
from stride_engine.corpus import JSONL_SUFFIXES, PARQUET_SUFFIXES

from ..core.executors import run_chain
from ..core.outputs import check_data_folder, finished_rerun, replacing
from ..errors import CurateError
from .items import BenchmarkItem, items_digest, load_benchmarks
from .pipeline import audit_executors, audit_pipelines
from .request import REQUEST_FILE, AuditRequest


def check_request(request: AuditRequest, overwrite: bool = False) -> tuple[list[BenchmarkItem], bool]:
    """Every check; returns the items and whether AUDIT holds this very audit, finished."""
    request.lexical().check()
    if request.fuzzy_settings() is not None:
        request.fuzzy_settings().check()
    request.rule().check()
    request.execution().check()
    if request.remove not in ("documents", "spans"):
        raise CurateError(f"--remove must be 'documents' or 'spans', got {request.remove!r}")
    if request.output_format not in ("jsonl", "parquet"):
        raise CurateError(f"output format {request.output_format!r} is not 'jsonl' or 'parquet'")
    _check_corpus(request)
    _check_model_inputs(request)
    if request.check:
        request.check_settings().check()
        if not request.decontaminate:
            raise CurateError("--check compares the corpus with its clean copy: give --decontaminate FOLDER too")
        if not (request.run or request.model):
            raise CurateError("--check trains proxies shaped like the audited model: give --run or --model")
    items = load_benchmarks(request.benchmarks, request.fields(), [Path(d) for d in request.task_dirs], request.item_limit)
    finished = finished_rerun(request.out, Path(request.out) / REQUEST_FILE, request.fingerprint(), overwrite, "audit")
    if request.decontaminate:
        check_data_folder(request.decontaminate, request.out, Path(request.out) / REQUEST_FILE, finished, overwrite,
                          "clean copy", "--decontaminate")
    return items, finished


def _check_corpus(request: AuditRequest) -> None:
    if not request.train:
        raise CurateError("no training corpus given: pass --train with JSONL/Parquet files")
    for path in map(Path, request.train):
        if not path.is_file():
            raise CurateError(f"training file {path} does not exist")
        if not path.name.lower().endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES):
            raise CurateError(f"training file {path}: use JSONL or Parquet")
        _check_first_record(path, request.text_field)


def _check_first_record(path: Path, text_field: str) -> None:
    """The text field is there (on the first record: a whole pass would cost what the scan costs)."""
    from stride_engine.corpus import iter_records
    from stride_engine import StrideError

    try:
        for line, record in iter_records(path):
            if text_field not in record:
                raise CurateError(f"training file {path}, record {line}: no text field {text_field!r} (it has {sorted(record)}); pass --text-field")
            return
    except StrideError as err:
        raise CurateError(f"training file {path}: {err}") from err
    raise CurateError(f"training file {path} has no records")


def _check_model_inputs(request: AuditRequest) -> None:
    """The run (fit on this very corpus) and the models exist, before the first stage."""
    from ..proxy.retrain import resolve_device

    resolve_device(request.device)
    if request.run and request.model:
        raise CurateError("give --run (whose model is the audited one) or --model, not both")
    if request.run:
        from ..core.run import Run
        from .attribution import check_run_corpus

        run = Run(request.run)
        run.require_operators("the audit's attribution signal")
        check_run_corpus(run, request.train, request.text_field, request.id_field)
    for name, folder in (("--model", request.model), ("--reference-model", request.reference_model)):
        if folder and not (Path(folder) / "config.json").is_file():
            raise CurateError(f"{name} {folder} is not a Hugging Face model folder (no config.json)")
    if request.reference_model and not (request.run or request.model):
        raise CurateError("--reference-model compares with the audited model: give --run or --model too")
    if not 1 <= request.top_k:
        raise CurateError(f"top_k must be at least 1, got {request.top_k}")


def run_audit(request: AuditRequest, overwrite: bool = False) -> dict[str, Any]:
    """Check everything, then run the stages (or finish an interrupted run of the same request); returns the manifest
    (local and Ray executors wait for it; Slurm returns {} once the jobs are submitted), with the inflation check's
    record under "check" when asked (a finished check with the same settings is reused)."""
    items, finished = check_request(request, overwrite)
    out = Path(request.out)
    manifest = out / "manifest.json"
    # with a clean copy, datatrove's completion markers decide what is left of a finished audit
    if not (finished and not request.decontaminate):
        replaced = (out, request.decontaminate) if overwrite else ()
        with replacing(*replaced):  # the old audit (and clean copy) stay until the new one is complete
            (out / REQUEST_FILE).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / REQUEST_FILE, json.dumps(request.fingerprint(), indent=2))
            described = {**request.fingerprint(), "items": len(items), "items_digest": items_digest(items)}
            run_chain(audit_executors(request, audit_pipelines(request, items, described)), request.execution())
    if not manifest.is_file():
        return {}
    if request.check:
        return {**json.loads(manifest.read_text()), "check": check_inflation(request)}
    return json.loads(manifest.read_text())


def check_inflation(request: AuditRequest) -> dict[str, Any]:
    """The inflation check into AUDIT/check (curate.contamination.inflation), proxies shaped like the audited model."""
    from .inflation import run_check

    model = request.model
    if request.run:
        from ..core.run import Run

        model = str(Run(request.run).inputs.model)
    return run_check(Path(request.out), [Path(p) for p in request.train], Path(request.decontaminate) / "kept", Path(model),
                     request.check_settings(), workers=request.workers, device=request.device)
