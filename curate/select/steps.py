"""Influence-based selection as datatrove steps: score -> global cut (one task) -> filter (many tasks) -> report.

    stage 1  [reader, InfluenceScorer(scores_folder=WORK/scores)]       many tasks: per-task score shards
    stage 2  [BudgetThreshold(WORK/scores, OUT, budget)]                one task:  the global cut (selection.parquet)
    stage 3  [reader, InfluenceScorer(), InfluenceFilter(OUT, exclusion_writer), writer]
    stage 4  [SelectionReport(OUT, request)]                            one task:  manifest.json and scores.png

chained with `depends=` (see `curate.select.pipeline`). The steps hold only paths and numbers until
`run()`: models, tokenizers and tables load inside the worker, so the steps pickle for Slurm and Ray.

The target's attribution (responses of the run's operators to the target, then recovery) is computed once, by
whichever task gets there first, under a file lock in the run directory; the other tasks wait and reuse it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from ..core.budget import check_allocation, parse_budget, part_columns, select_under_budget
from ..core.outputs import read_parquet, write_atomically, write_parquet
from ..errors import CurateError
from ..core.influence import influence_table
from .manifest import SELECTION_FILE, score_plot, selection_manifest


class InfluenceScorer(PipelineStep):
    """Annotates each document with its aggregate influence on the target (`metadata["influence"]`).

    With `scores_folder`, each task also writes its documents' (doc_id, score, tokens, domain, group) as one Parquet shard,
    which `BudgetThreshold` reads to place the global cut. With `by_part`, the shards also carry each part of the
    target's own scores (`part_score:<part>`), which balanced allocation shares the budget by.
    """

    name = "🎯 Influence scorer"
    type = "✨ ANNOTATOR"

    def __init__(
        self, run_dir: str | Path, target: str | Path, rule: str = "mean", k: int = 10,
        scores_folder: DataFolderLike | None = None, task_dirs: list[str | Path] | None = None, target_limit: int | None = None,
        method: str = "stride", seed: int = 0, by_part: bool = False, part_field: str = "part",
    ):
        super().__init__()
        self.run_dir, self.target, self.rule, self.k = str(run_dir), str(target), rule, k
        self.scores_folder = get_datafolder(scores_folder) if scores_folder is not None else None
        self.task_dirs = [str(d) for d in task_dirs or []]
        self.target_limit = target_limit
        self.method, self.seed = method, seed  # "stride", or a model-free baseline (curate.core.baselines)
        self.by_part, self.part_field = by_part, part_field  # the target items' field that names their part

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        table = influence_table(
            self.run_dir, self.target, self.rule, self.k, [Path(d) for d in self.task_dirs], self.target_limit, self.method,
            self.seed, self.by_part, self.part_field,
        )
        parts = part_columns(table)
        columns = ["doc_id", "influence", "tokens", "domain", "group", *parts]
        known = {row[0]: row for row in table.select(columns).iter_rows()}
        shard: list[tuple] = []
        for doc in data or []:
            with self.track_time():
                if doc.id not in known:
                    raise CurateError(
                        f"document {doc.id!r} is not in run {self.run_dir}: documents are matched to the run by their "
                        "id field; select from the corpus the run was fit on (or fit a run on this one)"
                    )
                row = known[doc.id]
                doc.metadata["influence"] = row[1]
                shard.append(row)
            self.stat_update("scored")
            yield doc
        if self.scores_folder is not None:
            schema = {"doc_id": pl.String, "score": pl.Float64, "tokens": pl.Int64, "domain": pl.String, "group": pl.Int64}
            frame = pl.DataFrame(shard, schema={**schema, **{name: pl.Float64 for name in parts}}, orient="row")
            write_parquet(frame, self.scores_folder, f"{rank:05d}.parquet")


class BudgetThreshold(PipelineStep):
    """One task: reads every scorer shard and writes the selection (rank, kept or not, why) for the budget."""

    name = "✂️ Budget threshold"
    type = "📊 STATS"

    def __init__(
        self, scores_folder: DataFolderLike, output_folder: DataFolderLike, budget: str, domain_floor: float = 0.0,
        allocation: str = "greedy",
    ):
        super().__init__()
        self.scores_folder = get_datafolder(scores_folder)
        self.output_folder = get_datafolder(output_folder)
        self.budget = parse_budget(budget)  # a malformed budget fails when the pipeline is built, before it runs
        self.domain_floor = domain_floor
        check_allocation(allocation)
        self.allocation = allocation  # "greedy", "proportional" (across recovery groups) or "balanced" (across the target's parts)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != 1:
            raise CurateError(f"BudgetThreshold places one global cut: run it as a single task (got {world_size} tasks)")
        shards = sorted(self.scores_folder.list_files(glob_pattern="*.parquet"))
        if not shards:
            raise CurateError(f"no score shards in {self.scores_folder.path}: run the InfluenceScorer stage first")
        frames = [read_parquet(self.scores_folder, name) for name in shards]
        selection = select_under_budget(pl.concat(frames), self.budget, self.domain_floor, self.allocation)
        self.stat_update("selected", value=int(selection["selected"].sum()))
        self.stat_update("excluded", value=int((~selection["selected"]).sum()))
        write_parquet(selection, self.output_folder, SELECTION_FILE)
        yield from data or []


class InfluenceFilter(BaseFilter):
    """Keeps the documents the budget selected; the others go to the exclusion writer with the reason."""

    name = "🎯 Influence filter"

    def __init__(self, selection_folder: DataFolderLike, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.selection_folder = get_datafolder(selection_folder)
        self._selection: dict[str, tuple] | None = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._selection is None:
            self._selection = self._load()
        if doc.id not in self._selection:
            raise CurateError(f"document {doc.id!r} was not scored: run stages 1-2 on the same input as this filter")
        selected, rank, reason = self._selection[doc.id]
        doc.metadata["influence_rank"] = rank
        if selected:
            return True
        doc.metadata["exclusion_reason"] = reason  # the detailed reason; the short one below keeps stats readable
        return False, "below_budget_cut"

    def _load(self) -> dict[str, tuple]:
        if not self.selection_folder.isfile(SELECTION_FILE):
            raise CurateError(f"no {SELECTION_FILE} in {self.selection_folder.path}: run the BudgetThreshold stage first")
        table = read_parquet(self.selection_folder, SELECTION_FILE)
        return {row[0]: row[1:] for row in table.select("doc_id", "selected", "rank", "reason").iter_rows()}


class SelectionReport(PipelineStep):
    """One task, last: the manifest and a plot of the scores with the cut, written atomically (a selection folder
    with a manifest is a finished selection)."""

    name = "📝 Selection report"
    type = "📊 STATS"

    def __init__(self, output_folder: DataFolderLike, request: dict[str, Any]):
        super().__init__()
        self.output_folder = get_datafolder(output_folder)
        self.request = request

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        selection = read_parquet(self.output_folder, SELECTION_FILE)
        manifest = selection_manifest(selection, self.request)
        write_atomically(self.output_folder, "scores.png", score_plot(selection, self.request))
        write_atomically(self.output_folder, "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
        yield from data or []
