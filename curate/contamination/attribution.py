"""The attribution signal: each benchmark item as a query to a fitted STRIDE run over the audited corpus.

For every item, its `top_k` most influential documents, each with its score, its rank and how far it stands out of
the item's scores over the whole corpus, `z = score / std` (the scores of one query are sparse: most documents score
exactly 0, so their median and MAD are 0 and the spread is the standard deviation over every document, which the
run records per query); and per item how concentrated its influence is, the top document's share of the positive
mass of its top k (1.0 when one document alone moved the item's loss, as a single copy would).

The run must have been fit on the audited corpus: its documents are the ones the scan reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import polars as pl

from stride_engine import Queries

from ..core.run import Run
from ..errors import CurateError
from .items import BenchmarkItem, items_digest
from .memorisation import item_queries


def check_run_corpus(run: Run, train: Sequence[str | Path], text_field: str, id_field: str) -> None:
    """The run was fit on these very files, read with these fields (else its documents are not the audited ones)."""
    fitted = sorted(str(Path(p).resolve()) for p in run.inputs.train)
    audited = sorted(str(Path(p).resolve()) for p in train)
    if fitted != audited:
        raise CurateError(
            f"run {run.root} was fit on {', '.join(fitted)}, not on the audited corpus {', '.join(audited)}: "
            "fit a run on the corpus you audit (curate fit --train ...)"
        )
    if (run.config.text_field, run.config.id_field) != (text_field, id_field):
        raise CurateError(
            f"run {run.root} reads its documents with text field {run.config.text_field!r} and id field "
            f"{run.config.id_field!r}; audit with the same (--text-field, --id-field)"
        )


def attribution_scores(run: Run, items: Sequence[BenchmarkItem], top_k: int = 10) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(per item: benchmark, item_id, attribution_top_score, attribution_z, concentration;
        per (item, document) in each item's top k: benchmark, item_id, doc_id, attribution_score, attribution_rank, attribution_z)."""
    queries = item_queries(items, run.tokenizer, run.window)
    store = run.score_store(_store_name(items), queries)
    spread = store.queries().select("query_id", pl.col("score_std").alias("std"))
    top = (
        store.top(k=top_k, direction="positive")
        .join(spread, on="query_id", how="left")
        .select(
            "query_id", "doc_id", pl.col("score").alias("attribution_score"), pl.col("rank").alias("attribution_rank"),
            pl.when(pl.col("std") > 0).then(pl.col("score") / pl.col("std")).otherwise(None).alias("attribution_z"),
        )
    )
    keys = pl.DataFrame({"query_id": [i.key for i in items], "benchmark": [i.benchmark for i in items], "item_id": [i.id for i in items]})
    pairs = keys.join(top, on="query_id", how="inner").drop("query_id")
    per_item = keys.join(
        top.group_by("query_id").agg(
            pl.col("attribution_score").max().alias("attribution_top_score"),
            pl.col("attribution_z").max(),
            (pl.col("attribution_score").max() / pl.col("attribution_score").sum()).alias("concentration"),
        ),
        on="query_id", how="left",
    ).drop("query_id")
    return per_item, pairs


@dataclass(frozen=True)
class ItemQuerySets:
    """The audit's one query set (its benchmark items), for the attribution stage (curate.core.attribution)."""

    items: tuple[BenchmarkItem, ...]

    def sets(self, run: Run) -> dict[str, Queries]:
        return {_store_name(self.items): item_queries(self.items, run.tokenizer, run.window)}


def _store_name(items: Sequence[BenchmarkItem]) -> str:
    """One score store per set of items, so two audits of different benchmarks on one run do not clash."""
    return f"contamination-{items_digest(items)[:12]}"
