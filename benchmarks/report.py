"""Results → a Markdown table and PNG plots (LDS per method with its per-query spread, LDS against wall time,
top-k removal curves). Everything here reads only the results JSON, so a report can be regenerated any time."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from curate.studies.notes import keep_notes
from stride_engine.artifacts import atomic_write_text

GROUP_ORDER = {"stride": 0, "peer": 1, "baseline": 2, "ablation": 3}


def write_report(results: Path) -> Path:
    rows = json.loads(Path(results).read_text())
    folder = results.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    plots = [_plot_lds(rows, folder / "lds.png"), _plot_lds_time(rows, folder / "lds_vs_time.png"), _plot_removal(rows, folder / "removal.png")]
    text = markdown(rows, [p for p in plots if p is not None], results.parent)
    out = results.with_suffix(".md")
    dirty = next((r["commit"] for r in rows if str(r.get("commit", "")).endswith("-dirty")), None)
    atomic_write_text(out, keep_notes(out, text, dirty))  # the notes of the file stay
    return out


def _sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["setting"], GROUP_ORDER.get(r["group"], 9), -(r.get("lds_mean") or -9)))


def markdown(rows: list[dict[str, Any]], plots: list[Path], base: Path) -> str:
    commands = sorted({r.get("command", "") for r in rows} - {""})
    lines = ["# Attribution benchmark: STRIDE against peer methods, by explicit retraining", "",
             "Made by " + ", then ".join(f"`{c}`" for c in commands), ""]
    if rows:
        machine = rows[0]["machine"]
        commits = Counter(str(r.get("commit")) for r in rows)
        stamps = ", ".join(f"{c} ({n} rows)" for c, n in sorted(commits.items(), key=lambda kv: -kv[1]))
        lines += [f"Machine: {machine['cpus']} CPUs, {machine['platform']}, torch {machine['torch']}; "
                  f"commit{'s' if len(commits) > 1 else ''} {stamps} (each row's own is in the JSON).", ""]
    lines += ["## Results", ""]  # the hand-written notes (curate.studies.notes) go before it
    for setting in sorted({r["setting"] for r in rows}):
        group = [r for r in _sorted(rows) if r["setting"] == setting]
        truth = next((r["ground_truth"] for r in group if "ground_truth" in r), {})
        ks = next((r["removal"]["k"] for r in group if r.get("removal")), [])
        lines += [f"### {setting} ({group[0]['scale']}; LDS over {truth.get('subsets')} retrains on {truth.get('fraction'):.0%} subsets)", ""]
        header = (["method", "group", "LDS mean", "LDS std (queries)", "LDS p10 / p90", "no score"] + [f"drop@{k}" for k in ks]
                  + ["seconds", "peak MB"])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in group:
            if r["status"] != "ok":
                cells = [r["method"], r["group"], r["status"] + ": " + r.get("error", "")[:80]] + [""] * (len(header) - 3)
            else:
                spread = np.percentile(r["lds_per_query"], [10, 90])
                drops = r.get("removal", {}).get("drop_mean", [None] * len(ks))
                missing = r.get("queries_without_scores")  # rows made before it was counted have none
                cells = [r["method"], r["group"], f"{r['lds_mean']:.3f}", f"{r['lds_std']:.3f}", f"{spread[0]:.2f} / {spread[1]:.2f}",
                         "" if missing is None else f"{missing} of {len(r['lds_per_query'])}"]
                cells += ["" if d is None else f"{d:.3f}" for d in drops]
                cells += [f"{r['seconds']:.1f}", f"{r['peak_rss_mb']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["no score: queries whose scores are the same for every training example (all zero): the method names no",
              "example as shaping them (blank: a row made before this was counted).", ""]
    lines += ["drop@k: mean drop of the query's true-class probability after removing its k top-scored training examples",
              "and retraining (averaged over seeds), a random ranking's drop is the `random` row.", ""]
    lines += [f"![{p.stem}]({p.relative_to(base).as_posix()})" for p in plots]
    return "\n".join(lines) + "\n"


def _ok(rows):
    return [r for r in _sorted(rows) if r["status"] == "ok"]


def _settings(rows):
    return sorted({r["setting"] for r in rows})


def _plot_lds(rows, path: Path) -> Path | None:
    rows = _ok(rows)
    if not rows:
        return None
    settings = _settings(rows)
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 0.35 * max(len([r for r in rows if r["setting"] == s]) for s in settings) + 1.5), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        group = [r for r in rows if r["setting"] == setting][::-1]
        ax.boxplot([r["lds_per_query"] for r in group], orientation="horizontal", showfliers=False, widths=0.6)
        ax.scatter([r["lds_mean"] for r in group], range(1, len(group) + 1), marker="D", color="crimson", zorder=3, label="mean")
        ax.set_yticks(range(1, len(group) + 1), [r["method"] for r in group])
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(f"{setting}: LDS per query")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_lds_time(rows, path: Path) -> Path | None:
    rows = _ok(rows)
    if not rows:
        return None
    settings = _settings(rows)
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for r in (r for r in rows if r["setting"] == setting):
            point = (max(r["seconds"], 0.01), r["lds_mean"])
            if r["group"] == "ablation":  # many, close together: grey dots, named in the table rather than here
                ax.scatter(*point, marker=".", color="grey", alpha=0.6)
                continue
            marker = {"stride": "o", "peer": "s", "baseline": "x"}.get(r["group"], "o")
            ax.scatter(*point, marker=marker)
            ax.annotate(r["method"], point, fontsize=7, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("wall time, seconds (log)")
        ax.set_ylabel("LDS (mean over queries)")
        ax.set_title(f"{setting} (grey dots: STRIDE ablations)" if any(r["group"] == "ablation" and r["setting"] == setting for r in rows) else setting)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_removal(rows, path: Path) -> Path | None:
    rows = [r for r in _ok(rows) if r.get("removal") and r["group"] != "ablation"]
    if not rows:
        return None
    settings = _settings(rows)
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for r in (r for r in rows if r["setting"] == setting):
            ax.plot(r["removal"]["k"], r["removal"]["drop_mean"], marker="o", label=r["method"], ls="--" if r["group"] == "baseline" else "-")
        ax.set_xlabel("k training examples removed")
        ax.set_ylabel("drop in true-class probability")
        ax.set_title(f"{setting}: top-k removal")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
