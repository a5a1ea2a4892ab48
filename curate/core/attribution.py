"""The attribution stage of a job, for many tasks: each task measures and recovers its share of the job's query
sets, then one task merges the shares into each set's score store.

    stage  [QueryAttribution(run, query_sets)]          many tasks: task r of N writes part r of every query set
    stage  [AttributionMerge(run, query_sets, N)]       one task:  responses/<set>.npy and scores/<set>/

Without it the first task that needs a target's store computes all of it while the others wait (Run.score_store);
with it the responses, the expensive part with a large model, and the recovery are shared by N tasks (the engine's
Stride.attribute_part: the same numbers as one process gives). The later stages find the stores finished.
A query-set description (`query_sets`) is any picklable object with `sets(run) -> {name: Queries}`:
targets.TargetQuerySets, or an audit's benchmark items.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from stride_engine import Queries

from ..errors import CurateError
from .run import Run

SINGLE_TASK = ("merge",)  # of the two stages, the one that runs as a single task


class QuerySets(Protocol):
    def sets(self, run: Run) -> dict[str, Queries]: ...


class QueryAttribution(PipelineStep):
    """Task `rank` of `world_size`: its share of every query set's responses and recovery (run/parts/<set>/)."""

    name = "🧮 Query attribution"
    type = "📊 STATS"

    def __init__(self, run_dir: str | Path, query_sets: QuerySets):
        super().__init__()
        self.run_dir, self.query_sets = str(run_dir), query_sets

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        run = Run(self.run_dir)
        for name, queries in self.query_sets.sets(run).items():
            with self.track_time():
                run.attribute_part(name, queries, rank, world_size)
            self.stat_update("query_sets")
        yield from data or []


class AttributionMerge(PipelineStep):
    """One task: each query set's parts (from `parts` tasks) become its responses and score store."""

    name = "🧮 Attribution merge"
    type = "📊 STATS"

    def __init__(self, run_dir: str | Path, query_sets: QuerySets, parts: int):
        super().__init__()
        self.run_dir, self.query_sets, self.parts = str(run_dir), query_sets, parts

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != 1:
            raise CurateError(f"AttributionMerge writes each score store once: run it as a single task (got {world_size} tasks)")
        run = Run(self.run_dir)
        for name, queries in self.query_sets.sets(run).items():
            store = run.merge_parts(name, queries, self.parts)
            self.stat_update("queries", value=len(store.queries()))
        yield from data or []


def attribution_pipelines(run_dir: str | Path, query_sets: QuerySets, tasks: int) -> dict[str, list]:
    """The two stages to put before a job's first stage that reads score stores; `tasks`: the job's task count."""
    return {
        "attribute": [QueryAttribution(run_dir, query_sets)],
        "merge": [AttributionMerge(run_dir, query_sets, tasks)],
    }
