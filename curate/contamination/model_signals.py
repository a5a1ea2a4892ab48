"""The stage that asks the audited model: attribution (with a fitted run) and memorisation (with the run's model,
or a model given alone), one task, between the scan and the report.

    WORK/attribution_items.parquet, WORK/attribution_pairs.parquet   with a run
    WORK/memorisation.parquet                                        with a run or a model
"""

from __future__ import annotations

from datatrove.data import DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep

import polars as pl

from ..core.outputs import read_parquet, write_parquet
from ..errors import CurateError
from .memorisation import MemorisationSettings, memorisation_scores
from .steps import ITEMS_FILE, frame_items

ATTRIBUTION_ITEMS = "attribution_items.parquet"
ATTRIBUTION_PAIRS = "attribution_pairs.parquet"
MEMORISATION = "memorisation.parquet"


class ModelSignals(PipelineStep):
    """One task: the item-level and (item, document) signals of the audited model, written into the work folder."""

    name = "🧪 Model signals"
    type = "📊 STATS"

    def __init__(self, work_folder: DataFolderLike, run_dir: str | None = None, model: str | None = None,
                 reference_model: str | None = None, top_k: int = 10, min_k: float = 0.2, device: str = "cpu"):
        super().__init__()
        if run_dir is None and model is None:
            raise CurateError("ModelSignals needs a run (attribution and memorisation) or a model (memorisation)")
        self.work_folder = get_datafolder(work_folder)
        self.run_dir, self.model, self.reference_model = run_dir, model, reference_model
        self.top_k, self.min_k, self.device = top_k, min_k, device

    def _measure(self) -> None:
        items = frame_items(read_parquet(self.work_folder, ITEMS_FILE))
        model = self.model
        if self.run_dir is not None:
            from ..core.run import Run
            from .attribution import attribution_scores

            run = Run(self.run_dir)
            per_item, pairs = attribution_scores(run, items, self.top_k)
            texts = pl.DataFrame({"doc_id": run.documents.ids, "text": run.documents.texts})
            write_parquet(per_item, self.work_folder, ATTRIBUTION_ITEMS)
            write_parquet(pairs.join(texts, on="doc_id", how="left"), self.work_folder, ATTRIBUTION_PAIRS)
            model = model or str(run.inputs.model)
        table = memorisation_scores(model, items, MemorisationSettings(k=self.min_k), self.reference_model, self.device)
        write_parquet(table, self.work_folder, MEMORISATION)
        self.stat_update("items", value=len(items))

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != 1:
            raise CurateError(f"ModelSignals runs as a single task (got {world_size} tasks)")
        with self.track_time():
            self._measure()
        yield from data or []


def read_model_signals(work_folder) -> dict[str, pl.DataFrame | None]:
    folder = get_datafolder(work_folder)
    found = {name: read_parquet(folder, name) if folder.isfile(name) else None for name in (ATTRIBUTION_ITEMS, ATTRIBUTION_PAIRS, MEMORISATION)}
    return {"attribution_items": found[ATTRIBUTION_ITEMS], "attribution_pairs": found[ATTRIBUTION_PAIRS], "memorisation": found[MEMORISATION]}
