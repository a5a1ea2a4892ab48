"""datatrove pipeline steps of the curate applications (they run under Local, Slurm and Ray executors)."""

from .report import SelectionReport
from .selection import BudgetThreshold, InfluenceFilter, InfluenceScorer

__all__ = ["BudgetThreshold", "InfluenceFilter", "InfluenceScorer", "SelectionReport"]
