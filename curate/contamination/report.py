"""The audit's last stage: verdicts, the two tables, the Markdown report with plots, the review page, the manifest.

    AUDIT/items.parquet      one row per benchmark item: verdict, signals that fired, best coverage, flagged documents
    AUDIT/documents.parquet  one row per flagged (item, document) pair: level, signals, coverage, spans, the text
    AUDIT/report.md          counts per verdict and benchmark, the rule and its thresholds, the flagged items
    AUDIT/signals.png        per-signal score distributions; AUDIT/verdicts.png: verdicts per benchmark
    AUDIT/report.html        one self-contained page a reviewer opens in a browser
    AUDIT/manifest.json      inputs, settings, digests, counts (written last: an audit with a manifest is finished)
"""

from __future__ import annotations

import io
import json
from typing import Any

import polars as pl
from datatrove.data import DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep

from ..core.outputs import read_parquet, write_atomically, write_parquet
from .model_signals import read_model_signals
from .steps import DOCUMENTS_FILE, ITEMS_FILE, read_matches
from .verdict import VERDICTS, Evidence, VerdictRule, flagged_documents, item_verdicts


class AuditReport(PipelineStep):
    """One task, after the scan: reads the evidence shards and writes every output of the audit."""

    name = "🧪 Audit report"
    type = "📊 STATS"

    def __init__(self, work_folder: DataFolderLike, output_folder: DataFolderLike, request: dict[str, Any], rule: VerdictRule):
        super().__init__()
        rule.check()
        self.work_folder, self.output_folder = get_datafolder(work_folder), get_datafolder(output_folder)
        self.request, self.rule = request, rule

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        evidence = Evidence(read_parquet(self.work_folder, ITEMS_FILE), read_matches(self.work_folder), **read_model_signals(self.work_folder))
        flagged = flagged_documents(evidence, self.rule)
        verdicts = item_verdicts(evidence, flagged, self.rule)
        write_parquet(verdicts, self.output_folder, "items.parquet")
        write_parquet(flagged, self.output_folder, DOCUMENTS_FILE)
        summary = verdict_counts(verdicts)
        write_atomically(self.output_folder, "signals.png", signal_plot(verdicts, self.rule))
        write_atomically(self.output_folder, "verdicts.png", verdict_plot(summary))
        write_atomically(self.output_folder, "report.md", markdown_report(verdicts, flagged, summary, self.request, self.rule).encode())
        write_atomically(self.output_folder, "report.html", review_page(verdicts, flagged, self.request).encode())
        manifest = {**self.request, "counts": summary.to_dicts(), "flagged_documents": flagged["doc_id"].n_unique(),
                    "flagged_pairs": len(flagged), "rule": self.rule.__dict__}
        write_atomically(self.output_folder, "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
        for verdict in VERDICTS:
            self.stat_update(verdict, value=int((verdicts["verdict"] == verdict).sum()))
        yield from data or []


def verdict_counts(verdicts: pl.DataFrame) -> pl.DataFrame:
    """Items per verdict per benchmark, every verdict a column (0 where none)."""
    counts = verdicts.group_by("benchmark").agg(
        pl.len().alias("items"), *[(pl.col("verdict") == v).sum().cast(pl.Int64).alias(v) for v in VERDICTS],
    )
    return counts.sort("benchmark")


def markdown_report(verdicts: pl.DataFrame, flagged: pl.DataFrame, summary: pl.DataFrame, request: dict[str, Any],
                    rule: VerdictRule) -> str:
    lines = [
        "# Contamination audit", "",
        f"Benchmarks: {', '.join(request['benchmarks'])}. Training corpus: {', '.join(request['train'])}.", "",
        "| benchmark | items | " + " | ".join(VERDICTS) + " |", "| --- | ---: | " + " | ".join("---:" for _ in VERDICTS) + " |",
        *(f"| {r['benchmark']} | {r['items']} | " + " | ".join(str(r[v]) for v in VERDICTS) + " |" for r in summary.iter_rows(named=True)),
        "",
        "## The rule", "",
        f"- `contaminated`: a training document covers at least {rule.contaminated_coverage:.0%} of the item's question or "
        f"answer with exact {request['question_n']}-grams (answers: {request['answer_n']}-grams, or the whole answer when it is "
        f"shorter but has at least {request['answer_min_words']} words), on normalised words;",
        f"  or holds an edited copy of its question: {rule.fuzzy_similarity:.0%} of its word bigrams and {rule.number_recall:.0%} "
        "of its numbers (as values: `16` and `sixteen` alike) in one window (the fuzzy signal, MinHash-LSH candidates);",
        f"- `suspicious`: at least {rule.suspicious_coverage:.0%} (an edited or partial copy, or a template sibling: review it);",
        *_model_rule_lines(verdicts, rule),
        "- `clean`: none of these.", "",
        f"{len(flagged)} (item, document) pairs flagged over {flagged['doc_id'].n_unique()} documents. "
        "Open `report.html` to review each flagged item beside its documents, the matched spans highlighted.", "",
        "![signals](signals.png)", "", "![verdicts](verdicts.png)", "",
    ]
    shown = verdicts.filter(pl.col("verdict") != "clean").sort("question_coverage", "answer_coverage", descending=True).head(50)
    if len(shown):
        lines += ["## Flagged items (the 50 with the highest coverage)", "",
                  "| benchmark | item | verdict | question coverage | answer coverage | documents | question |",
                  "| --- | --- | --- | ---: | ---: | ---: | --- |"]
        for r in shown.iter_rows(named=True):
            question = " ".join(r["question"].split())[:90].replace("|", "\\|")
            lines.append(f"| {r['benchmark']} | {r['item_id']} | {r['verdict']} | {r['question_coverage']:.2f} | "
                         f"{r['answer_coverage']:.2f} | {r['documents']} | {question} |")
    else:
        lines.append("No item is flagged.")
    return "\n".join(lines) + "\n"


SIGNAL_COLUMNS = {
    "question_coverage": "lexical: best question coverage", "answer_coverage": "lexical: best answer coverage",
    "fuzzy_similarity": "fuzzy: best bigram containment",
    "attribution_z": "attribution: top document's z", "min_k_pp": "memorisation: Min-K%++", "reference_gap": "memorisation: loss gap to reference",
}


def signal_plot(verdicts: pl.DataFrame, rule: VerdictRule) -> bytes:
    """One histogram per signal the audit measured, with its thresholds (dotted: suspicious, dashed: contaminated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in SIGNAL_COLUMNS if c in verdicts.columns and verdicts[c].drop_nulls().len()]
    thresholds = {"question_coverage": (rule.suspicious_coverage, rule.contaminated_coverage),
                  "answer_coverage": (rule.suspicious_coverage, rule.contaminated_coverage),
                  "fuzzy_similarity": (None, rule.fuzzy_similarity),
                  "attribution_z": (rule.attribution_z, None), "min_k_pp": (rule.min_k_pp, None), "reference_gap": (rule.reference_gap, None)}
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.4), squeeze=False)
    for ax, column in zip(axes[0], columns):
        values = verdicts[column].drop_nulls().to_numpy()
        ax.hist(values, bins=40, range=(0, 1) if "coverage" in column or "fuzzy" in column else None, color="#4c72b0")
        for threshold, style in zip(thresholds[column], (":", "--")):
            if threshold is not None:
                ax.axvline(threshold, color="#c44e52", linestyle=style)
        ax.set_yscale("log")
        ax.set_xlabel(SIGNAL_COLUMNS[column], fontsize=8)
        ax.set_ylabel("items")
    return _png(fig)


def verdict_plot(summary: pl.DataFrame) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(summary) + 2), 3.6))
    bottom = [0] * len(summary)
    for verdict, color in zip(("contaminated", "suspicious"), ("#c44e52", "#dd8452")):
        values = summary[verdict].to_list()
        ax.bar(summary["benchmark"].to_list(), values, bottom=bottom, label=verdict, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("items")
    ax.set_title("flagged items per benchmark", fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig)


def review_page(verdicts: pl.DataFrame, flagged: pl.DataFrame, request: dict[str, Any]) -> str:
    from .html import render_audit_html

    # signals this audit did not compute are shown as not measured (null), not as zeros
    missing = [c for c in ("fuzzy_similarity", "attribution_z", "loss", "min_k_pp") if c not in verdicts.columns]
    items = verdicts.with_columns(*(pl.lit(None, dtype=pl.Float64).alias(c) for c in missing))
    return render_audit_html(items, flagged, request)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _model_rule_lines(verdicts: pl.DataFrame, rule: VerdictRule) -> list[str]:
    """How the model's signals entered the verdict: with their thresholds, or measured and reported only."""
    lines = []
    for column, threshold, what in (("attribution_z", rule.attribution_z, "a document in the item's top 10 attributions stands out with z"),
                                    ("min_k_pp", rule.min_k_pp, "the model's Min-K%++ on the item is"),
                                    ("reference_gap", rule.reference_gap, "the model finds the item easier than the reference by (nats/token)")):
        if column not in verdicts.columns:
            continue
        values = verdicts[column].drop_nulls()
        spread = f"median {values.median():.3g}, max {values.max():.3g} over {values.len()} items" if values.len() else "no value"
        if threshold is None:
            lines.append(f"- {column} ({spread}): measured and reported, not in the verdict (no threshold given);")
        else:
            lines.append(f"- `suspicious` also when {what} at least {threshold:g} ({spread});")
    return lines
