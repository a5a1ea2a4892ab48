"""A reweighting as datatrove pipelines (weights, the resampled dataset when asked, report) and their executors."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

from ..core.executors import chain_executors
from ..core.readers import pool_readers
from ..core.run import Run
from .request import ReweightRequest
from .steps import DomainWeights, MixtureSampler, ReweightReport

GLOBAL_STAGES = ("weights", "report")


def reweight_pipelines(request: ReweightRequest, domains_of: dict[str, str] | None = None) -> dict[str, list]:
    out = Path(request.out)
    described = {k: v for k, v in asdict(request).items() if k != "executor_options"}
    pipelines = {"weights": [DomainWeights(described, str(out))]}
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
