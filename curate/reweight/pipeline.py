"""A reweighting as datatrove pipelines (the target's attribution with more than one task, weights, the resampled
dataset when asked, report) and their executors."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

from ..core import attribution
from ..core.attribution import attribution_pipelines
from ..core.executors import chain_executors
from ..core.readers import pool_readers
from ..core.run import Run
from ..core.targets import TargetQuerySets
from .domain_operators import DOMAIN_OPERATORS
from .request import ReweightRequest
from .steps import DomainWeights, MixtureSampler, ReweightReport

GLOBAL_STAGES = (*attribution.SINGLE_TASK, "weights", "report")


def reweight_pipelines(request: ReweightRequest, domains_of: dict[str, str] | None = None,
                       by_part: bool = False) -> dict[str, list]:
    """`by_part`: the target has several parts (check_request says), so each part is a query set of its own."""
    out = Path(request.out)
    described = {k: v for k, v in asdict(request).items() if k != "executor_options"}
    pipelines = {}
    if _attributes_target(request) and request.execution().tasks > 1:  # shared by the tasks (curate.core.attribution);
        # with one task the weights stage attributes the target itself: a stage fewer that reopens the run
        query_sets = TargetQuerySets(request.target, tuple(map(str, request.task_dirs)), request.target_limit,
                                     request.part_field, by_part=by_part)
        pipelines |= attribution_pipelines(request.run, query_sets, request.execution().tasks)
    pipelines["weights"] = [DomainWeights(described, str(out))]
    if request.out_data:
        run = Run(request.run)
        writer = ParquetWriter if request.output_format == "parquet" else JsonlWriter
        pipelines["sample"] = [
            *pool_readers(run.inputs.train, run.config.text_field, run.config.id_field),
            MixtureSampler(str(out), request.domain_field, request.seed, domains_of),
            writer(str(request.out_data), expand_metadata=True),
        ]
    pipelines["report"] = [ReweightReport(str(out), described)]
    return pipelines


def reweight_executors(request: ReweightRequest, pipelines: dict[str, list]) -> list:
    return chain_executors(pipelines, request.execution(), Path(request.out) / ".work" / "logs", "curate-reweight", GLOBAL_STAGES)


def _attributes_target(request: ReweightRequest) -> bool:
    """Whether the weights read the run's attribution of the target: every STRIDE rule does (the aggregations its score
    stores, the domain regression its responses, which the same stages write) but the domain operators, which measure
    the target with a bank of their own; a given mixture and a baseline do not."""
    return request.weights is None and request.method == "stride" and request.rule != DOMAIN_OPERATORS
