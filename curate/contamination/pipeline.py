"""An audit as datatrove pipelines (index, scan, report, and the clean copy when asked) and their executors.

The scan and the clean copy work document by document and run as many tasks, and with a run and more than one task,
so does the items' attribution (curate.core.attribution); the index, the attribution's merge, the signals and the
report run as one. The
same pipelines run under the local, Slurm and Ray executors (curate.core.executors).
"""

from __future__ import annotations

from pathlib import Path

from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

from ..core import attribution
from ..core.attribution import attribution_pipelines
from ..core.executors import chain_executors
from ..core.readers import pool_readers
from .attribution import ItemQuerySets
from .items import BenchmarkItem
from .model_signals import ModelSignals
from .report import AuditReport
from .request import AuditRequest
from .steps import ContaminationFilter, ContaminationIndex, ContaminationScorer

GLOBAL_STAGES = ("index", *attribution.SINGLE_TASK, "signals", "report")


def audit_pipelines(request: AuditRequest, items: list[BenchmarkItem], manifest: dict) -> dict[str, list]:
    out = Path(request.out)
    work = out / ".work"
    readers = lambda: pool_readers([Path(p) for p in request.train], request.text_field, request.id_field)  # noqa: E731
    pipelines = {
        "index": [ContaminationIndex(items, str(work), request.lexical(), request.fuzzy_settings())],
        "scan": [*readers(), ContaminationScorer(str(work))],
    }
    if request.run and request.execution().tasks > 1:  # the items' attribution, shared by the tasks (one task: the
        # signals stage attributes them itself, a stage fewer that reopens the run)
        pipelines |= attribution_pipelines(request.run, ItemQuerySets(tuple(items)), request.execution().tasks)
    if request.run or request.model:
        pipelines["signals"] = [ModelSignals(str(work), request.run, request.model, request.reference_model, request.top_k,
                                             request.min_k, request.device)]
    pipelines["report"] = [AuditReport(str(work), str(out), manifest, request.rule())]
    if request.decontaminate:
        writer = ParquetWriter if request.output_format == "parquet" else JsonlWriter
        clean = Path(request.decontaminate)
        pipelines["decontaminate"] = [
            *readers(),
            ContaminationFilter(str(out), request.remove, exclusion_writer=writer(str(clean / "excluded"), expand_metadata=True)),
            writer(str(clean / "kept"), expand_metadata=True),
        ]
    return pipelines


def audit_executors(request: AuditRequest, pipelines: dict[str, list]) -> list:
    return chain_executors(pipelines, request.execution(), Path(request.out) / ".work" / "logs", "curate-contamination", GLOBAL_STAGES)
