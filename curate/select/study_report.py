"""The report of a selection study: a Markdown table (mean ± std over proxy seeds, change against random) and a plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from stride_engine.artifacts import atomic_write_text

from ..studies.notes import keep_notes
from ..studies.results import against_reference


def write_report(rows: list[dict], recipe: dict, path: Path) -> None:
    """The Markdown table (path.md) and the plot (path.png) of a selection study's rows."""
    table = summary(rows)
    out = Path(path).with_suffix(".md")
    atomic_write_text(out, keep_notes(out, markdown(table, rows, recipe), rows[0].get("commit")))  # the notes stay
    plot(table, Path(path).with_suffix(".png"))


def _seconds(value: float | None) -> str:
    return f"{value:.0f} s" if value is not None else "time not recorded"


def summary(rows: list[dict]) -> pl.DataFrame:
    frame = pl.DataFrame([{k: r[k] for k in ("target", "budget", "method", "seed", "target_ppl")} for r in rows])
    return (
        frame.group_by("target", "budget", "method", maintain_order=True)
        .agg(ppl=pl.col("target_ppl").mean(), std=pl.col("target_ppl").std(), seeds=pl.len())
    )


def markdown(table: pl.DataFrame, rows: list[dict], recipe: dict) -> str:
    context = rows[0]
    lines = [
        f"# Selection study: {context['recipe']}{' (smoke)' if context['smoke'] else ''}",
        "",
        f"Made by `{context['command']}` at commit {context['commit']} on {context['machine']['cpus']} CPUs; "
        f"STRIDE fit {_seconds(context['stride_fit_seconds'])}; this invocation {context['invocation_seconds'] / 60:.0f} min "
        "(stages an earlier invocation finished are reused: runs, selections and proxies are cached by their settings).",
        "",
        "Target word perplexity (lm-eval `loglikelihood_rolling` on held-out target items) of a proxy trained from scratch",
        "on each selection, mean ± std over proxy seeds; lower is better. Every proxy takes the same number of steps.",
        "vs random: the change of the mean, and Welch's t-test of the seeds' log perplexities against random's.",
        "",
    ]
    domains = list(rows[0].get("domain_ppl", {}))
    for target in dict.fromkeys(table["target"]):
        lines += [f"## target: {target}", "", "| budget | method | target ppl | vs random | " + " | ".join(f"{d} ppl" for d in domains) + " | selected per domain |",
                  "| --- | --- | --- | --- | " + " | ".join("---" for _ in domains) + " | --- |"]
        part = table.filter(pl.col("target") == target)
        for row in part.iter_rows(named=True):
            mine = [r for r in rows if (r["target"], r["budget"], r["method"]) == (target, row["budget"], row["method"])]
            random = [r["target_ppl"] for r in rows if (r["target"], r["budget"], r["method"]) == (target, row["budget"], "random")]
            change = against_reference([r["target_ppl"] for r in mine], random) if random and row["method"] != "random" else ""
            shares = mine[0].get("selected_per_domain") or {}
            lines.append(
                f"| {row['budget']} | {row['method']} | {row['ppl']:.1f} ± {row['std'] or 0:.1f} | {change} | "
                + " | ".join(f"{np.mean([r['domain_ppl'][d] for r in mine]):.0f}" for d in domains)
                + f" | {', '.join(f'{k} {v}' for k, v in shares.items())} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(table: pl.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(table["target"]))
    figure, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.6), squeeze=False)
    for axis, target in zip(axes[0], targets):
        part = table.filter(pl.col("target") == target)
        budgets = [b for b in dict.fromkeys(part["budget"]) if b != "100%"]
        methods = [m for m in dict.fromkeys(part["method"]) if m != "full-pool"]
        width = 0.8 / max(1, len(methods))
        for i, method in enumerate(methods):
            values = [part.filter((pl.col("budget") == b) & (pl.col("method") == method)) for b in budgets]
            axis.bar(np.arange(len(budgets)) + i * width, [v["ppl"][0] for v in values], width,
                     yerr=[v["std"][0] or 0 for v in values], label=method)
        full = part.filter(pl.col("method") == "full-pool")
        if len(full):
            axis.axhline(full["ppl"][0], color="black", linestyle="--", linewidth=1, label="whole pool")
        axis.set_xticks(np.arange(len(budgets)) + 0.4 - width / 2, budgets)
        axis.set_title(f"target: {target}", fontsize=10)
        axis.set_ylabel("target word perplexity (log scale; lower is better)", fontsize=8)
        axis.set_yscale("log")  # a collapsed selection can be 10-100x worse than the rest
    handles, labels = axes[0][0].get_legend_handles_labels()  # one legend under the panels, clear of the bars
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, 0.05 + 0.03 * (len(labels) // 7), 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
