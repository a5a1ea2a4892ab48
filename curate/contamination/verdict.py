"""The rule that turns the signals into a flag per (item, document) and a verdict per item.

A document is flagged for an item when a signal fires on the pair; an item's verdict is the strongest its documents
and its own signals reach:

- `contaminated`: some document covers at least `contaminated_coverage` of the item's question or of its answer
  with exact n-grams (a copy, whole or in part, that a reader would call the item), or holds an edited copy of
  its question: `fuzzy_similarity` of its bigrams and `number_recall` of its numbers in one window (curate.contamination.fuzzy);
- `suspicious`: some document covers at least `suspicious_coverage` of it (a partial or edited copy, or a template
  sibling: a reviewer decides); or, when their thresholds are given, a document stands out of the item's
  attribution (`attribution_z`), or the model knows the item too well (`min_k_pp`, `reference_gap`);
- `clean`: none of these.

The coverage defaults were read off the shared corpus: GSM8K *train* problems, which are not copies of test items,
reach a question coverage of 0.76 on a test item at most (template siblings such as "A train travels 270 miles in
3 hours..." vs "A plane travels 1200 miles in 3 hours..."), so 0.8 calls none of them contaminated, and every such
sibling above 0.5 is shown as suspicious. The fuzzy thresholds were read off an injected corpus
(curate/contamination/inject.py, rate 1%, seed 0): at similarity 0.6 and number recall 0.8, 67 of the 68
question copies of any kind (verbatim, question only, three rewordings) fire and none of the 7,473 GSM8K train
problems does; the best-scoring sibling (0.75) keeps a third of the numbers. The model signals' defaults were chosen by the audit study (benchmarks/results/contamination_audit.md,
`curate recipe recipes/contamination_audit.yaml`) on one case (rate 1%, seed 0: a small Llama trained on a
3,200-document corpus with injected GSM8K test items), as the least values no never-injected item of it reaches:
Min-K%++ -0.83 and a reference gap of 0.41 nats/token (used only with a reference model). On the cases that did not
choose them, they call 0-3 of 150 never-injected items suspicious. Both depend on the model; for another model,
measure them the same way. Attribution has no default: its z grows with the corpus, and on the study's corpora the
threshold that kept precision at 1.0 flagged 2-6% of the copies, all of them found by exact n-grams already.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from ..errors import CurateError

VERDICTS = ("contaminated", "suspicious", "clean")
MIN_K_PP = -0.83  # chosen by the audit study (see above)
REFERENCE_GAP = 0.41
SIGNALS = ("lexical", "fuzzy", "attribution", "memorisation")


@dataclass(frozen=True)
class VerdictRule:
    contaminated_coverage: float = 0.8
    suspicious_coverage: float = 0.5
    fuzzy_similarity: float = 0.6  # an edited copy: this share of the question's bigrams in one window...
    number_recall: float = 0.8  # ...and this share of its numbers
    attribution_z: float | None = None  # a top-k document with z at least this is flagged (no default: see above)
    min_k_pp: float | None = MIN_K_PP  # an item with Min-K%++ at least this is suspicious
    reference_gap: float | None = REFERENCE_GAP  # an item the model finds this much easier (nats/token) than the reference

    def check(self) -> None:
        if not 0 < self.suspicious_coverage <= self.contaminated_coverage <= 1:
            raise CurateError(
                "coverage thresholds must satisfy 0 < suspicious <= contaminated <= 1 "
                f"(got suspicious {self.suspicious_coverage}, contaminated {self.contaminated_coverage})"
            )


@dataclass(frozen=True)
class Evidence:
    """What the audit measured: the scan's lexical matches, and the model's signals when a run or model was given."""

    items: pl.DataFrame  # benchmark, item_id, question, answer, context (the index's order)
    matches: pl.DataFrame  # the scan's shards: doc_id, item (index), coverage per field, spans, text
    attribution_items: pl.DataFrame | None = None  # benchmark, item_id, attribution_top_score, attribution_z, concentration
    attribution_pairs: pl.DataFrame | None = None  # benchmark, item_id, doc_id, attribution_score, _rank, _z, text
    memorisation: pl.DataFrame | None = None  # benchmark, item_id, loss, min_k_pp (, reference_loss, reference_gap)


PAIR_COLUMNS = ("doc_id", "benchmark", "item_id", "level", "signals", "question_coverage", "answer_coverage",
                "context_coverage", "fuzzy_similarity", "number_recall", "attribution_score", "attribution_rank", "attribution_z", "spans", "text")


def flagged_documents(evidence: Evidence, rule: VerdictRule) -> pl.DataFrame:
    """The (item, document) pairs a signal fires on, with all the evidence on each pair."""
    keyed = evidence.items.select(pl.int_range(pl.len()).alias("item"), "benchmark", "item_id")
    lexical = evidence.matches.join(keyed, on="item", how="left").drop("item")
    pairs = _with_attribution(lexical, evidence.attribution_pairs)
    best = pl.max_horizontal(pl.col("question_coverage").fill_null(0.0), pl.col("answer_coverage").fill_null(0.0))
    fires_lexical = best >= rule.suspicious_coverage
    fires_fuzzy = ((pl.col("fuzzy_similarity") >= rule.fuzzy_similarity) & (pl.col("number_recall") >= rule.number_recall)).fill_null(False)
    fires_attribution = (pl.col("attribution_z") >= rule.attribution_z).fill_null(False) if rule.attribution_z is not None else pl.lit(False)
    signals = pl.concat_list(
        pl.when(fires_lexical).then(pl.lit(["lexical"])).otherwise(pl.lit([], dtype=pl.List(pl.String))),
        pl.when(fires_fuzzy).then(pl.lit(["fuzzy"])).otherwise(pl.lit([], dtype=pl.List(pl.String))),
        pl.when(fires_attribution).then(pl.lit(["attribution"])).otherwise(pl.lit([], dtype=pl.List(pl.String))),
    )
    copy = (best >= rule.contaminated_coverage) | fires_fuzzy
    return (
        pairs.filter(fires_lexical | fires_fuzzy | fires_attribution)
        .with_columns(
            signals.alias("signals"),
            pl.when(copy).then(pl.lit("contaminated")).otherwise(pl.lit("suspicious")).alias("level"),
            pl.col("question_coverage", "answer_coverage", "context_coverage").fill_null(0.0),
            pl.col("spans").fill_null(pl.lit([], dtype=evidence.matches.schema["spans"])),
        )
        .select(PAIR_COLUMNS)
        .sort("benchmark", "item_id", "question_coverage", "answer_coverage", descending=[False, False, True, True])
    )


def _with_attribution(lexical: pl.DataFrame, attribution: pl.DataFrame | None) -> pl.DataFrame:
    """Every lexical match and every top-k attribution pair, joined where they are the same (item, document)."""
    if attribution is None:
        return lexical.with_columns(
            pl.lit(None, dtype=pl.Float64).alias("attribution_score"), pl.lit(None, dtype=pl.Int64).alias("attribution_rank"),
            pl.lit(None, dtype=pl.Float64).alias("attribution_z"),
        )
    joined = lexical.join(attribution, on=["benchmark", "item_id", "doc_id"], how="full", coalesce=True, suffix="_run")
    return joined.with_columns(pl.coalesce("text", "text_run").alias("text")).drop("text_run")


def item_verdicts(evidence: Evidence, flagged: pl.DataFrame, rule: VerdictRule) -> pl.DataFrame:
    """One row per item: its verdict, the signals that fired, its best evidence and how many documents are flagged."""
    keyed = evidence.items.with_columns(pl.int_range(pl.len()).alias("item"))
    best = evidence.matches.group_by("item").agg(
        pl.col("question_coverage", "answer_coverage", "context_coverage", "fuzzy_similarity").max()
    )
    per_item = flagged.group_by("benchmark", "item_id").agg(
        pl.len().alias("documents"),
        (pl.col("level") == "contaminated").any().alias("_contaminated"),
        pl.col("signals").list.explode(keep_nulls=False, empty_as_null=False).unique().sort().alias("_document_signals"),
    )
    table = keyed.join(best, on="item", how="left").join(per_item, on=["benchmark", "item_id"], how="left")
    for extra in (evidence.attribution_items, evidence.memorisation):
        if extra is not None:
            table = table.join(extra, on=["benchmark", "item_id"], how="left")
    memorised = _memorised(table, rule)
    table = table.with_columns(
        pl.col("question_coverage", "answer_coverage", "context_coverage").fill_null(0.0),
        pl.col("documents").fill_null(0).cast(pl.Int64),
        pl.concat_list(
            pl.col("_document_signals").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            pl.when(memorised).then(pl.lit(["memorisation"])).otherwise(pl.lit([], dtype=pl.List(pl.String))),
        ).alias("signals"),
    ).with_columns(
        pl.when(pl.col("_contaminated").fill_null(False)).then(pl.lit("contaminated"))
        .when(pl.col("signals").list.len() > 0).then(pl.lit("suspicious"))
        .otherwise(pl.lit("clean")).alias("verdict")
    )
    shown = ["benchmark", "item_id", "question", "answer", "verdict", "signals", "question_coverage", "answer_coverage",
             "context_coverage", "fuzzy_similarity", "documents"]
    model_columns = [c for c in ("attribution_top_score", "attribution_z", "concentration", "loss", "min_k_pp",
                                 "reference_loss", "reference_gap") if c in table.columns]
    return table.select(*shown, *model_columns)


def _memorised(table: pl.DataFrame, rule: VerdictRule) -> pl.Expr:
    fires = pl.lit(False)
    if rule.min_k_pp is not None and "min_k_pp" in table.columns:
        fires = fires | (pl.col("min_k_pp") >= rule.min_k_pp).fill_null(False)
    if rule.reference_gap is not None and "reference_gap" in table.columns:
        fires = fires | (pl.col("reference_gap") >= rule.reference_gap).fill_null(False)
    return fires
