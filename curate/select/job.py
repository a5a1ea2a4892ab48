"""`curate select`: keep the part of a run's training pool that helps a target most, under a budget.

    OUT/selected/       the kept documents (original fields + `influence`, `influence_rank`), datatrove writer
    OUT/excluded/       the others, each with `exclusion_reason`
    OUT/selection.parquet   every document: doc_id, score, tokens, domain, rank, selected, reason
    OUT/manifest.json   run, target, budget, rule, counts per domain, score distribution, selected ids/scores/ranks
    OUT/scores.png      the score distribution and the cut
    OUT/.work/          score shards, the request, datatrove logs and completion markers (what a rerun reuses)

Everything that can be wrong with the input (budget, rule, run, target, executor, output folder) is checked before
OUT is created. A rerun with the same request resumes (finished datatrove tasks are skipped; a finished selection is
returned as it is); a rerun with another request into the same OUT is refused, naming what changed, unless told to
`overwrite` (OUT is then removed first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stride_engine.artifacts import atomic_write_text

from ..core.baselines import METHODS
from ..core.budget import NO_GROUPS, check_allocation, parse_budget
from ..core.executors import run_chain
from ..core.outputs import finished_rerun, replacing
from ..core.readers import pool_readers
from ..core.run import AGGREGATION_RULES, Run
from ..core.targets import Target, target_for_run
from ..errors import CurateError
from ..core.influence import influence_table
from .pipeline import selection_executors, selection_pipelines
from .request import REQUEST_FILE, SelectionRequest


def check_request(request: SelectionRequest, overwrite: bool = False) -> tuple[Target, bool]:
    """Every check that needs no output folder, then the folder's; returns the target (its attribution is computed
    here) and whether OUT holds this very selection, finished."""
    budget = parse_budget(request.budget)
    if request.method not in ("stride", *METHODS):
        raise CurateError(f"selection method {request.method!r} is not one of {['stride', *METHODS]}")
    if request.rule not in AGGREGATION_RULES:
        raise CurateError(f"aggregation rule {request.rule!r} is not one of {list(AGGREGATION_RULES)}")
    check_allocation(request.allocation)
    if request.output_format not in ("jsonl", "parquet"):
        raise CurateError(f"output format {request.output_format!r} is not 'jsonl' or 'parquet'")
    request.execution().check()
    if not 0.0 <= request.domain_floor <= 1.0:
        raise CurateError(f"domain floor {request.domain_floor} must be between 0 and 1 (a share of the budget per domain)")
    finished = finished_rerun(request.out, Path(request.out) / REQUEST_FILE, request.fingerprint(), overwrite, "selection",
                              replaceable_without_saved=True)
    run = Run(request.run)
    task_dirs = [Path(d) for d in request.task_dirs]
    target = target_for_run(run, request.target, task_dirs, request.target_limit, request.part_field)
    if request.method == "stride":  # attributed by the pipeline's first stages, on the executor's tasks
        run.require_operators("selection by influence")
        budget.limit(run.document_count, int(run.document_tokens()["tokens"].sum()))  # a budget larger than the pool fails here
        if request.allocation == "proportional" and not run.config.groups:
            raise CurateError(NO_GROUPS)
        return target, finished
    table = influence_table(run, request.target, request.rule, request.k, task_dirs, request.target_limit,
                            request.method, request.seed, request.allocation == "balanced",
                            request.part_field)  # a model-free baseline's scores: computed here, reused by the stages
    budget.limit(len(table), int(table["tokens"].sum()))
    check_allocation(request.allocation, table)
    return target, finished


def run_selection(request: SelectionRequest, overwrite: bool = False) -> dict[str, Any]:
    """Check everything, then run the four stages (or finish an interrupted run of the same request); returns the
    manifest (local and Ray executors wait for it; Slurm returns {} once the jobs are submitted)."""
    target, finished = check_request(request, overwrite)
    out = Path(request.out)
    manifest = out / "manifest.json"
    if finished:
        return json.loads(manifest.read_text())
    run = Run(request.run)
    with replacing(out if overwrite else None):  # the old selection stays until the new one is complete
        (out / REQUEST_FILE).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / REQUEST_FILE, json.dumps(request.fingerprint(), indent=2))
        readers = pool_readers(run.inputs.train, run.config.text_field, run.config.id_field)
        pipelines = selection_pipelines(request, readers, target)
        run_chain(selection_executors(request, pipelines), request.execution())
    return json.loads(manifest.read_text()) if manifest.is_file() else {}
