"""What a finished selection says about itself: the manifest (counts, budget, scores, per domain/group/part) and
the plot of the scores with the cut. The last stage (`steps.SelectionReport`) writes both from selection.parquet."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import polars as pl

from ..core.budget import parse_budget

SELECTION_FILE = "selection.parquet"  # every pool document: doc_id, score, tokens, domain, rank, selected, reason

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def selection_manifest(selection: pl.DataFrame, request: dict[str, Any]) -> dict[str, Any]:
    kept = selection.filter(pl.col("selected"))
    budget = parse_budget(request["budget"])
    unit, limit = budget.limit(len(selection), int(selection["tokens"].sum()))
    per_domain = (
        selection.group_by("domain")
        .agg(
            pool_documents=pl.len(),
            selected_documents=pl.col("selected").sum(),
            pool_tokens=pl.col("tokens").sum(),
            selected_tokens=pl.col("tokens").filter(pl.col("selected")).sum(),
            mean_score=pl.col("score").mean(),
        )
        .with_columns(selected_share=pl.col("selected_documents") / pl.col("pool_documents"))
        .sort("domain")
    )
    manifest = {
        "request": request,
        "budget": {"text": budget.text, "kind": budget.kind, "unit": unit, "limit": limit},
        "pool": {"documents": len(selection), "tokens": int(selection["tokens"].sum())},
        "selected": {"documents": len(kept), "tokens": int(kept["tokens"].sum())},
        "excluded": {"documents": len(selection) - len(kept), "tokens": int(selection["tokens"].sum() - kept["tokens"].sum())},
        "lowest_kept_score": float(kept["score"].min()) if len(kept) else None,
        "scores": {name: _quantiles(frame["score"]) for name, frame in (
            ("all", selection), ("selected", kept), ("excluded", selection.filter(~pl.col("selected"))),
        )},
        "per_domain": per_domain.to_dicts(),
        "files": {"selected": "selected/", "excluded": "excluded/", "table": SELECTION_FILE, "plot": "scores.png"},
        "selected_documents": kept.select(pl.col("doc_id").alias("id"), "score", "rank").to_dicts(),
    }
    if "group_value" in selection.columns:  # proportional allocation: what each recovery group was worth and got
        per_group = selection.group_by("group").agg(
            value=pl.col("group_value").first(),
            pool_documents=pl.len(),
            selected_documents=pl.col("selected").sum(),
            majority_domain=pl.col("domain").mode().sort().first(),
        )
        manifest["per_group"] = per_group.sort("value", descending=True).to_dicts()
    if "part" in selection.columns:  # balanced allocation: what each part of the target took, and from which domains
        per_part = []
        for part, frame in selection.filter(pl.col("selected")).group_by("part", maintain_order=True):
            counts = frame["domain"].value_counts().sort("domain")
            per_part.append({
                "part": part[0], "selected_documents": len(frame), "selected_tokens": int(frame["tokens"].sum()),
                "lowest_part_score": float(frame["part_score"].min()), "domains": dict(counts.iter_rows()),
            })
        manifest["per_part"] = per_part
    return manifest


def _quantiles(scores: pl.Series) -> dict[str, float] | None:
    if len(scores) == 0:
        return None
    values = np.quantile(scores.to_numpy(), QUANTILES)
    return {f"q{int(q * 100):02d}": float(v) for q, v in zip(QUANTILES, values)} | {"mean": float(scores.mean())}


def score_plot(selection: pl.DataFrame, request: dict[str, Any]) -> bytes:
    """Histogram of document scores per domain, selected and excluded stacked, with the lowest kept score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.6))
    scores = selection["score"].to_numpy()
    bins = np.linspace(scores.min(), scores.max() if scores.max() > scores.min() else scores.min() + 1, 50)
    for domain in sorted(selection["domain"].unique().to_list()):
        axis.hist(selection.filter(pl.col("domain") == domain)["score"].to_numpy(), bins=bins, alpha=0.55, label=str(domain))
    kept = selection.filter(pl.col("selected"))["score"]
    if len(kept):
        axis.axvline(float(kept.min()), color="black", linestyle="--", label=f"lowest kept ({len(kept)} kept)")
    axis.set_xlabel(f"influence on the target ({request.get('rule', 'mean')})")
    axis.set_ylabel("documents")
    axis.set_title(f"budget {request.get('budget')}: target {request.get('target')}", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
