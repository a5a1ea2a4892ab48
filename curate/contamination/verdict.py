"""The rule that turns the signals into a flag per (item, document) and a verdict per item.

A document is flagged for an item when a signal fires on the pair; an item's verdict is the strongest its documents
and its own signals reach:

- `contaminated`: some document covers at least `contaminated_coverage` of the item's question or of its answer
  with exact n-grams (a copy, whole or in part, that a reader would call the item);
- `suspicious`: some document covers at least `suspicious_coverage` of it (a partial or edited copy, or a template
  sibling: a reviewer decides);
- `clean`: neither.

The defaults were read off the shared corpus: GSM8K *train* problems, which are not copies of test items, reach a
question coverage of 0.76 on a test item at most (template siblings such as "A train travels 270 miles in 3 hours..."
vs "A plane travels 1200 miles in 3 hours..."), so 0.8 calls none of them contaminated, and every such sibling
above 0.5 is shown as suspicious.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from ..errors import CurateError

VERDICTS = ("contaminated", "suspicious", "clean")


@dataclass(frozen=True)
class VerdictRule:
    contaminated_coverage: float = 0.8
    suspicious_coverage: float = 0.5

    def check(self) -> None:
        if not 0 < self.suspicious_coverage <= self.contaminated_coverage <= 1:
            raise CurateError(
                "coverage thresholds must satisfy 0 < suspicious <= contaminated <= 1 "
                f"(got suspicious {self.suspicious_coverage}, contaminated {self.contaminated_coverage})"
            )


def flagged_documents(matches: pl.DataFrame, items: pl.DataFrame, rule: VerdictRule) -> pl.DataFrame:
    """The (item, document) pairs a signal fires on, with the evidence; `matches` is the scan's shards, concatenated."""
    best = pl.max_horizontal("question_coverage", "answer_coverage")
    flagged = matches.filter(best >= rule.suspicious_coverage)
    keyed = items.select(pl.int_range(pl.len()).alias("item"), "benchmark", "item_id")
    return (
        flagged.join(keyed, on="item", how="left")
        .with_columns(
            pl.lit(["lexical"], dtype=pl.List(pl.String)).alias("signals"),
            pl.when(best >= rule.contaminated_coverage).then(pl.lit("contaminated")).otherwise(pl.lit("suspicious")).alias("level"),
        )
        .select("doc_id", "benchmark", "item_id", "level", "signals", "question_coverage", "answer_coverage",
                "context_coverage", "spans", "text")
        .sort("benchmark", "item_id", "question_coverage", "answer_coverage", descending=[False, False, True, True])
    )


def item_verdicts(items: pl.DataFrame, matches: pl.DataFrame, flagged: pl.DataFrame) -> pl.DataFrame:
    """One row per item: its verdict, the signals that fired, its best coverage and how many documents are flagged."""
    keyed = items.with_columns(pl.int_range(pl.len()).alias("item"))
    best = matches.group_by("item").agg(
        pl.col("question_coverage").max(), pl.col("answer_coverage").max(), pl.col("context_coverage").max(),
    )
    per_item = flagged.group_by("benchmark", "item_id").agg(
        pl.len().alias("documents"),
        (pl.col("level") == "contaminated").any().alias("_contaminated"),
        pl.col("signals").list.explode(keep_nulls=False, empty_as_null=False).unique().sort().alias("signals"),
    )
    table = (
        keyed.join(best, on="item", how="left")
        .join(per_item, on=["benchmark", "item_id"], how="left")
        .with_columns(
            pl.col("question_coverage", "answer_coverage", "context_coverage").fill_null(0.0),
            pl.col("documents").fill_null(0).cast(pl.Int64),
            pl.col("signals").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        )
        .with_columns(
            pl.when(pl.col("_contaminated")).then(pl.lit("contaminated"))
            .when(pl.col("documents") > 0).then(pl.lit("suspicious"))
            .otherwise(pl.lit("clean")).alias("verdict")
        )
    )
    return table.select(
        "benchmark", "item_id", "question", "answer", "verdict", "signals", "question_coverage", "answer_coverage",
        "context_coverage", "documents",
    )
