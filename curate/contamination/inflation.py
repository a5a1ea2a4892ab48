"""The inflation check: how much a benchmark's contamination inflates a model's score on it.

GPT-3 reported its benchmarks on the clean and the contaminated items apart; lm-eval once gave that report and no
longer does. Here a proxy model is trained from the same start on the audited corpus and on its decontaminated
copy (equal steps, the same seeds), and each proxy is scored with lm-eval on the benchmark's items in two groups:
the ones the audit flagged (`contaminated` or `suspicious`) and the `clean` ones.

The score is the items' bits per byte (rolling log-likelihood of each item's text, lower is better): the proxies
are far too small to solve the benchmark's problems, but a model that saw an item predicts its text better. What
contamination does to the number shows as the flagged items' score getting worse once the copies are removed,
while the clean items' stays where it was:

    inflation = (decontaminated - original) on flagged items  -  (decontaminated - original) on clean items

in bits per byte, the second term removing what the removed documents taught about every item alike.

    CHECK/items-flagged.jsonl, CHECK/items-clean.jsonl   the two groups, as lm-eval reads them
    CHECK/proxies/<corpus>/seed<k>, CHECK/eval/...       each proxy and its evaluation (reused by a rerun)
    CHECK/inflation.parquet                              one row per corpus x seed x group
    CHECK/inflation.md, CHECK/inflation.png              the side-by-side table and its plot
    CHECK/check.json                                     settings and the summary, written last
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from stride_engine.artifacts import atomic_write_bytes, atomic_write_text

from ..errors import CurateError

GROUPS = ("flagged", "clean")
CORPORA = ("original", "decontaminated")
CHECK_FILE = "check.json"


@dataclass(frozen=True)
class CheckSettings:
    steps: int = 400  # every proxy alike: equal compute, different data
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 8
    seq_len: int = 128
    text: str = "{question}\n{answer}"  # how an item is written for its score (fields of the benchmark's items)

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 2 or not self.seeds:
            raise CurateError(f"the check needs steps, batch size >= 1, seq_len >= 2 and a seed (got {asdict(self)})")
        try:
            self.text.format(question="q", answer="a")
        except (KeyError, IndexError, ValueError) as err:
            raise CurateError(f"check text template {self.text!r} may only use {{question}} and {{answer}}: {err}") from err


def item_groups(audit: Path, folder: Path, text: str) -> dict[str, Path]:
    """The audit's items written per group (flagged / clean) as lm-eval task data; a group with no item is left out."""
    items = pl.read_parquet(Path(audit) / "items.parquet")
    files = {}
    for group in GROUPS:
        chosen = items.filter((pl.col("verdict") == "clean") if group == "clean" else (pl.col("verdict") != "clean"))
        if chosen.height == 0:
            continue
        rows = [{"id": f"{r['benchmark']}/{r['item_id']}", "text": text.format(question=r["question"], answer=r["answer"])}
                for r in chosen.iter_rows(named=True)]
        path = Path(folder) / f"items-{group}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        files[group] = path
    return files


def task_for(group: str) -> str:
    return f"contamination_{group}_items"


def check_jobs(original: Path | list[Path], decontaminated: Path, base: Path, folder: Path, settings: CheckSettings,
               groups: dict[str, Path], prefix: str = "", device: str = "cpu") -> list[dict[str, Any]]:
    """The proxy jobs (curate.studies.proxies) of the check: each corpus x seed, evaluated on both groups' tasks."""
    from ..proxy.evaluate import target_task
    from ..studies.proxies import proxy_job

    task_dir = Path(folder) / "tasks"
    tasks = [task_for(group) for group in groups]
    for group, path in groups.items():
        target_task(task_for(group), path, folder=task_dir)
    shape = {"proxy": {"steps": settings.steps, "batch_size": settings.batch_size}, "model": {"max_length": settings.seq_len},
             "device": device}
    data = {"original": original, "decontaminated": decontaminated}
    return [
        {**proxy_job(f"{prefix}{corpus}/seed{seed}", data[corpus], Path(folder), base, shape, seed, tasks, task_dir),
         "corpus": corpus}
        for corpus in CORPORA for seed in settings.seeds
    ]


def check_table(jobs: list[dict[str, Any]], measured: dict[str, dict]) -> pl.DataFrame:
    """One row per corpus x seed x group: the proxy's bits per byte and word perplexity on the group's items."""
    rows = []
    for job in jobs:
        values = measured[job["key"]]["values"]
        for task in job["tasks"]:
            group = task.removeprefix("contamination_").removesuffix("_items")
            rows.append({"corpus": job["corpus"], "seed": job["seed"], "group": group,
                         "bits_per_byte": values[f"{task}|bits_per_byte"], "word_perplexity": values[f"{task}|word_perplexity"]})
    return pl.DataFrame(rows, schema={"corpus": pl.String, "seed": pl.Int64, "group": pl.String,
                                      "bits_per_byte": pl.Float64, "word_perplexity": pl.Float64})


def summarise(table: pl.DataFrame) -> dict[str, Any]:
    """Per group: mean and spread over seeds on each corpus, the paired change, and the inflation (flagged minus clean)."""
    paired = table.pivot(on="corpus", index=["seed", "group"], values="bits_per_byte").with_columns(
        (pl.col("decontaminated") - pl.col("original")).alias("change"))
    summary: dict[str, Any] = {"groups": {}}
    for group in GROUPS:
        part = paired.filter(pl.col("group") == group)
        if part.height == 0:
            continue
        summary["groups"][group] = {
            "original": part["original"].mean(), "original_std": part["original"].std(),
            "decontaminated": part["decontaminated"].mean(), "decontaminated_std": part["decontaminated"].std(),
            "change": part["change"].mean(), "change_std": part["change"].std(), "seeds": part.height,
        }
    if set(summary["groups"]) == set(GROUPS):
        both = paired.pivot(on="group", index="seed", values="change")
        gap = both["flagged"] - both["clean"]
        summary["inflation_bits_per_byte"], summary["inflation_std"] = gap.mean(), gap.std()
    return summary


def markdown(summary: dict[str, Any], settings: CheckSettings, counts: dict[str, int]) -> str:
    def cell(mean: float | None, std: float | None) -> str:
        return "—" if mean is None else f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")

    lines = ["# Inflation check", "",
             f"A proxy trained on the audited corpus and one on its decontaminated copy ({settings.steps} steps, seeds "
             f"{', '.join(map(str, settings.seeds))}), each scored on the benchmark's items by bits per byte (lower is better).", "",
             "| items | count | original corpus | decontaminated corpus | change |", "| --- | ---: | ---: | ---: | ---: |"]
    for group, values in summary["groups"].items():
        lines.append(f"| {group} | {counts.get(group, 0)} | {cell(values['original'], values['original_std'])} | "
                     f"{cell(values['decontaminated'], values['decontaminated_std'])} | {cell(values['change'], values['change_std'])} |")
    if "inflation_bits_per_byte" in summary:
        lines += ["", f"Inflation: the flagged items' score is {summary['inflation_bits_per_byte']:+.4f} bits per byte "
                  f"(± {summary['inflation_std'] or 0:.4f} over seeds) further from the original once the copies are gone, "
                  "beyond what the clean items moved: that much of the flagged items' score came from the copies."]
    else:
        lines += ["", "One group is empty (no item flagged, or none clean): there is nothing to compare."]
    return "\n".join(lines) + "\n"


def plot(table: pl.DataFrame) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2))
    groups = [g for g in GROUPS if g in set(table["group"])]
    for offset, corpus in zip((-0.18, 0.18), CORPORA):
        part = table.filter(pl.col("corpus") == corpus)
        means = [part.filter(pl.col("group") == g)["bits_per_byte"].mean() for g in groups]
        spread = [part.filter(pl.col("group") == g)["bits_per_byte"].std() or 0.0 for g in groups]
        axis.bar([i + offset for i in range(len(groups))], means, 0.36, yerr=spread, label=f"{corpus} corpus")
    axis.set_xticks(range(len(groups)), [f"{g} items" for g in groups])
    axis.set_ylabel("bits per byte (lower is better)")
    axis.legend(frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def write_check(folder: Path, table: pl.DataFrame, settings: CheckSettings, groups: dict[str, Path], inputs: dict[str, Any]) -> dict:
    """The check's table, report and plot, then check.json last (a check with it is finished)."""
    folder = Path(folder)
    counts = {g: sum(1 for line in p.read_text().splitlines() if line.strip()) for g, p in groups.items()}
    summary = summarise(table)
    buffer = io.BytesIO()
    table.write_parquet(buffer)
    atomic_write_bytes(folder / "inflation.parquet", buffer.getvalue())
    atomic_write_text(folder / "inflation.md", markdown(summary, settings, counts))
    atomic_write_bytes(folder / "inflation.png", plot(table))
    record = {"settings": {**asdict(settings), "seeds": list(settings.seeds)}, "inputs": inputs, "items": counts, "summary": summary}
    atomic_write_text(folder / CHECK_FILE, json.dumps(record, indent=1) + "\n")
    return record


def run_check(audit: Path, original: list[Path], decontaminated: Path, base: Path, settings: CheckSettings,
              workers: int = 1, device: str = "cpu") -> dict[str, Any]:
    """The whole check into AUDIT/check (reused when finished with the same settings and inputs)."""
    from ..studies.proxies import run_proxy_jobs

    settings.check()
    folder = Path(audit) / "check"
    inputs = {"audit": str(Path(audit).resolve()), "original": [str(Path(p).resolve()) for p in original],
              "decontaminated": str(Path(decontaminated).resolve()), "base": str(Path(base).resolve())}
    done = folder / CHECK_FILE
    if done.is_file():
        record = json.loads(done.read_text())
        if record["settings"] == {**asdict(settings), "seeds": list(settings.seeds)} and record["inputs"] == inputs:
            return record
    groups = item_groups(Path(audit), folder, settings.text)
    if not groups:
        raise CurateError(f"the audit in {audit} has no items to check")
    jobs = check_jobs(list(original), Path(decontaminated), Path(base), folder, settings, groups, device=device)
    measured = run_proxy_jobs(jobs, workers)
    return write_check(folder, check_table(jobs, measured), settings, groups, inputs)
