"""Results of a selection study: JSON rows, a Markdown table (mean ± std over proxy seeds) and a plot."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from stride_engine.artifacts import atomic_write_text


def write_results(rows: list[dict], recipe: dict, path: Path, fit_seconds: float | None, total_seconds: float, smoke: bool) -> Path:
    path = Path(path)
    context = {
        "recipe": recipe.get("name"), "smoke": smoke, "commit": _commit(), "machine": _machine(),
        "command": "curate recipe " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "curate recipe",
        "stride_fit_seconds": fit_seconds, "invocation_seconds": round(total_seconds, 1),
    }
    rows = [{**row, **context} for row in rows]
    atomic_write_text(path, json.dumps(rows, indent=1) + "\n")
    table = summary(rows)
    atomic_write_text(path.with_suffix(".md"), markdown(table, rows, recipe))
    plot(table, path.with_suffix(".png"))
    return path


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
            change = against_random([r["target_ppl"] for r in mine], random) if random and row["method"] != "random" else ""
            shares = mine[0].get("selected_per_domain") or {}
            lines.append(
                f"| {row['budget']} | {row['method']} | {row['ppl']:.1f} ± {row['std'] or 0:.1f} | {change} | "
                + " | ".join(f"{np.mean([r['domain_ppl'][d] for r in mine]):.0f}" for d in domains)
                + f" | {', '.join(f'{k} {v}' for k, v in shares.items())} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def against_random(values: list[float], random: list[float]) -> str:
    """'-57.4% (p < 0.001)': the change of the mean perplexity against random's, and Welch's t-test on the seeds'
    log perplexities (perplexity is a ratio scale; a collapsed selection's seeds spread multiplicatively). Without
    two seeds on each side, the change alone."""
    change = f"{100 * (np.mean(values) / np.mean(random) - 1):+.1f}%"
    if min(len(values), len(random)) < 2:
        return change
    from scipy.stats import ttest_ind

    p = ttest_ind(np.log(values), np.log(random), equal_var=False).pvalue
    return f"{change} (p {'< 0.001' if p < 0.001 else f'= {p:.2g}'})"


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


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
