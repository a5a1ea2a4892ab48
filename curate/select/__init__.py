"""Data selection: keep the pool documents that help a target most, under a budget.

    request.py    SelectionRequest: what a selection is asked to do
    job.py        check_request, run_selection: every input checked, then the four stages run
    steps.py      the datatrove steps: InfluenceScorer, BudgetThreshold, InfluenceFilter, SelectionReport
    pipeline.py   the four pipelines and their chained executors (local, Slurm, Ray)
    manifest.py   the manifest and the score plot of a finished selection
    study.py      the selection application of the study runner (`curate recipe`)
"""

from ..core.influence import influence_table, prepare_parts, prepare_target
from .job import check_request, run_selection
from .manifest import SELECTION_FILE
from .pipeline import selection_executors, selection_pipelines
from .request import SelectionRequest
from .steps import BudgetThreshold, InfluenceFilter, InfluenceScorer, SelectionReport

__all__ = [
    "BudgetThreshold", "InfluenceFilter", "InfluenceScorer", "SELECTION_FILE", "SelectionReport", "SelectionRequest",
    "check_request", "influence_table", "prepare_parts", "prepare_target", "run_selection", "selection_executors",
    "selection_pipelines",
]
