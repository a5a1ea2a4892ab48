"""A selection as datatrove pipelines (the target's attribution, score, threshold, filter, report) and their executors.

The per-document stages (score, filter) run as many tasks, and with more than one, so does the target's attribution
(curate.core.attribution: each task measures and recovers a share of its queries); the global ones (the
attribution's merge, threshold, report) run as one. The same pipelines run under the local, Slurm and Ray executors
(curate.core.executors).
"""

from __future__ import annotations

from pathlib import Path

from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

from ..core import attribution
from ..core.attribution import attribution_pipelines
from ..core.executors import chain_executors
from ..core.targets import Target, TargetQuerySets
from .request import SelectionRequest, describe_request
from .steps import BudgetThreshold, InfluenceFilter, InfluenceScorer, SelectionReport

GLOBAL_STAGES = (*attribution.SINGLE_TASK, "threshold", "report")


def selection_pipelines(request: SelectionRequest, readers: list, target: Target | None = None) -> dict[str, list]:
    """The four pipelines of a selection, reading the pool with `readers` (curate.core.readers.pool_readers)."""
    out = Path(request.out)
    work = out / ".work"
    writer = ParquetWriter if request.output_format == "parquet" else JsonlWriter
    scorer = dict(run_dir=request.run, target=request.target, rule=request.rule, k=request.k, task_dirs=list(request.task_dirs),
                  target_limit=request.target_limit, method=request.method, seed=request.seed,
                  by_part=request.allocation == "balanced", part_field=request.part_field)
    pipelines = {}
    if request.method == "stride" and request.execution().tasks > 1:  # the target's attribution, shared by the tasks
        # (with one task, the scorer attributes the target itself: a stage fewer that reopens the run)
        query_sets = TargetQuerySets(request.target, tuple(map(str, request.task_dirs)), request.target_limit,
                                     request.part_field, by_part=scorer["by_part"])
        pipelines |= attribution_pipelines(request.run, query_sets, request.execution().tasks)
    return pipelines | {
        "score": [*readers, InfluenceScorer(**scorer, scores_folder=str(work / "scores"))],
        "threshold": [BudgetThreshold(str(work / "scores"), str(out), request.budget, request.domain_floor, request.allocation)],
        "filter": [
            *readers,
            InfluenceScorer(**scorer),
            InfluenceFilter(str(out), exclusion_writer=writer(str(out / "excluded"), expand_metadata=True)),
            writer(str(out / "selected"), expand_metadata=True),
        ],
        "report": [SelectionReport(str(out), describe_request(request, target))],
    }


def selection_executors(request: SelectionRequest, pipelines: dict[str, list]) -> list:
    """The four stages chained with `depends=`; the global stages (threshold, report) run as one task."""
    return chain_executors(pipelines, request.execution(), Path(request.out) / ".work" / "logs", "curate-select", GLOBAL_STAGES)
