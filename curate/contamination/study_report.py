"""The report of a contamination study: recall per kind and signal, precision and item AUC per case, the verdicts'
confusion, the inflation check, the stages' cost (Markdown, path.md) and a plot of recall per kind (path.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from stride_engine.artifacts import atomic_write_text

from ..studies.notes import keep_notes
from .inflation import summarise

from .ngram_rules import RULES

# Each signal alone, then the model-free audit, the whole audit and the n-gram rules. "attribution": the top-k
# documents whose z reaches the chosen threshold; "attribution, top-k": every top-k document (its recall is the
# share of copies in their item's top k); "loss": the audited model's loss alone (lower = seen).
SHOWN = ("lexical", "fuzzy", "attribution", "attribution, top-k", "memorisation", "loss", "reference_gap", "model-free",
         "combined", *RULES)
STAGES = ("inject", "train_model", "fit", "audit", "n-gram rules")


def write_report(rows: list[dict[str, Any]], recipe: dict[str, Any], path: Path) -> None:
    out = Path(path).with_suffix(".md")
    atomic_write_text(out, keep_notes(out, markdown(rows, recipe), rows[0].get("commit") if rows else None))
    plot(rows, Path(path).with_suffix(".png"))


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _signal_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("signal") not in (None, "check")]


def markdown(rows: list[dict[str, Any]], recipe: dict[str, Any]) -> str:
    signal_rows = _signal_rows(rows)
    context = rows[0]
    cases = list(dict.fromkeys((r["rate"], r["seed"]) for r in signal_rows))
    thresholds = context.get("thresholds", {})
    lines = [
        f"# Contamination study: {context.get('recipe')}{' (smoke)' if context.get('smoke') else ''}", "",
        f"Made by `{context.get('command')}` at commit {context.get('commit')}, on {context['machine']['cpus']} CPUs; "
        f"this invocation {context.get('invocation_seconds', 0) / 60:.0f} min (finished stages of an earlier one are reused).", "",
        f"Cases (injection rate, seed): {', '.join(f'{r}/{s}' for r, s in cases)}. Model thresholds chosen on case "
        f"{context['tuned_on'][0]}/{context['tuned_on'][1]} (the least value no never-injected item of it reaches): "
        + ", ".join(f"`{k}` = {v}" for k, v in thresholds.items()) + "; the other cases did not choose them.", "",
    ]
    frame = pl.DataFrame([{k: r.get(k) for k in ("rate", "seed", "signal", "kind", "items", "copies", "doc_recall", "item_auc")}
                          for r in signal_rows], infer_schema_length=None)
    kinds = sorted(set(frame["kind"]) - {"all"})
    signals = [s for s in SHOWN if s in set(frame["signal"])]
    for title, column in (("Recall of injected copies (documents), per kind, mean over cases", "doc_recall"),
                          ("Item ROC-AUC (injected items of a kind vs never-injected ones), per kind, mean over cases", "item_auc")):
        lines += [f"## {title}", "", "| signal | " + " | ".join(kinds) + " | all |", "| --- |" + " ---: |" * (len(kinds) + 1)]
        means = frame.group_by("signal", "kind").agg(pl.col(column).mean())
        for signal in signals:
            values = {r["kind"]: r[column] for r in means.filter(pl.col("signal") == signal).iter_rows(named=True)}
            if all(values.get(k) is None for k in [*kinds, "all"]):
                continue
            lines.append(f"| {signal} | " + " | ".join(_number(values.get(k)) for k in [*kinds, "all"]) + " |")
        counts = frame.filter((pl.col("signal") == "combined")).group_by("kind").agg(pl.col("items").sum(), pl.col("copies").sum())
        per = {r["kind"]: r for r in counts.iter_rows(named=True)}
        lines += ["| (items / copies, all cases) | " + " | ".join(f"{per[k]['items']} / {per[k]['copies']}" for k in [*kinds, "all"] if k in per) + " |", ""]
    lines += ["## Every case (all kinds)", "",
              "| rate | seed | signal | doc recall | doc precision | flagged pairs | never-injected items flagged | item AUC |",
              "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in signal_rows:
        if r["kind"] == "all" and r["signal"] in signals:
            lines.append(f"| {r['rate']} | {r['seed']} | {r['signal']} | {_number(r.get('doc_recall'))} | {_number(r.get('doc_precision'))} | "
                         f"{r.get('flagged_pairs', '—')} | {r.get('negative_items_flagged', '—')} | {_number(r.get('item_auc'))} |")
    lines += ["", "## The combined verdicts", "", "| rate | seed | items | contaminated | suspicious | clean |", "| ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in signal_rows:
        if r["kind"] == "all" and r["signal"] == "combined":
            for group, counts in r["confusion"].items():
                lines.append(f"| {r['rate']} | {r['seed']} | {group.replace('_', '-')} | {counts['contaminated']} | {counts['suspicious']} | {counts['clean']} |")
    inflation = inflation_summary(rows)
    if inflation:
        lines += ["", "## The inflation check (bits per byte of the items, lower is better; mean ± std over proxy seeds)", "",
                  "| rate | seed | items | original corpus | decontaminated corpus | change | inflation (flagged − clean change) |",
                  "| ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
        for (rate, seed), summary in inflation.items():
            for group, v in summary["groups"].items():
                extra = (f"{summary['inflation_bits_per_byte']:+.4f} ± {_number(summary.get('inflation_std'), 4)}"
                         if group == "flagged" and "inflation_bits_per_byte" in summary else "")
                lines.append(f"| {rate} | {seed} | {group} | {_number(v['original'], 4)} ± {_number(v['original_std'], 4)} | "
                             f"{_number(v['decontaminated'], 4)} ± {_number(v['decontaminated_std'], 4)} | {v['change']:+.4f} | {extra} |")
    lines += ["", "## Cost per case (seconds; peak resident memory of the study process after the case)", "",
              "| rate | seed | documents | " + " | ".join(STAGES) + " | peak RSS (MB) |", "| ---: | ---: | ---: |" + " ---: |" * (len(STAGES) + 1)]
    for r in signal_rows:
        if r["kind"] == "all" and r["signal"] == "combined":
            lines.append(f"| {r['rate']} | {r['seed']} | {r['documents']} | " + " | ".join(
                str(r.get(f"{s}_seconds", "—") if r.get(f"{s}_seconds") is not None else "—") for s in STAGES) + f" | {r['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pl.DataFrame([{k: r.get(k) for k in ("signal", "kind", "doc_recall")} for r in _signal_rows(rows)], infer_schema_length=None)
    frame = frame.filter(pl.col("doc_recall").is_not_null() & (pl.col("kind") != "all"))
    means = frame.group_by("signal", "kind").agg(pl.col("doc_recall").mean())
    kinds = sorted(set(means["kind"]))
    signals = [s for s in SHOWN if s in set(means["signal"])]
    figure, axis = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / max(1, len(signals))
    for i, signal in enumerate(signals):
        values = {r["kind"]: r["doc_recall"] for r in means.filter(pl.col("signal") == signal).iter_rows(named=True)}
        axis.bar([k + (i - len(signals) / 2 + 0.5) * width for k in range(len(kinds))], [values.get(k, 0) for k in kinds], width, label=signal)
    axis.set_xticks(range(len(kinds)), [k.replace("_", "\n") for k in kinds], fontsize=8)
    axis.set_ylabel("recall of injected copies")
    axis.set_ylim(0, 1.05)
    axis.legend(frameon=False, fontsize=7, ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def inflation_summary(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Per case: the inflation check's summary (curate.contamination.inflation.summarise) from the check rows."""
    check = pl.DataFrame([{"rate": r["rate"], "seed": r["proxy_seed"], "case_seed": r["seed"], "group": r["group"],
                           "corpus": r["corpus"], "bits_per_byte": r["bits_per_byte"]} for r in rows if r.get("signal") == "check"])
    if check.height == 0:
        return {}
    return {(rate, case_seed): summarise(part.drop("rate", "case_seed"))
            for (rate, case_seed), part in check.group_by("rate", "case_seed", maintain_order=True)}
