"""The model-free part of the audit benchmark: the audit's lexical and fuzzy signals against the n-gram rules people
use, on injected corpora, document by document and item by item.

For each rate and seed: an injected corpus (curate.contamination.inject), `curate contamination` on it without a
model, and two n-gram rules on the same text:

- `13-gram`: GPT-3's rule (also lm-eval's old decontamination): an item and a document overlap when they share any
  13-gram of lower-cased words, the item's text being its question and answer together;
- `8-gram`: the open-r1 convention, the same with 8-grams of the question;

and two peer tools from their own packages, each skipped with a message where its environment is missing:

- `decon`: allenai's decon (benchmarks.contamination.decon_peer, in its own Python >= 3.12 interpreter named by
  CURATE_DECON_PYTHON), at its defaults and at the setting tuned on rate 0.01, seed 0 only;
- `datatrove NGramsDecont`: datatrove's n-gram decontamination filter on an index of the items built with its
  indexer's hashing (benchmarks.contamination.datatrove_peer says why not with the indexer step itself).

Rows: per method and kind of copy, the documents' recall (copies flagged / copies injected) and per method the
precision over every flagged (item, document) pair, and the items' recall and false positives (never-injected items
flagged). The audit is scored at its `contaminated` level and at any flag (`contaminated` or `suspicious`).

    python -m benchmarks.contamination.lexical_bench --out benchmarks/results/contamination_lexical
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import polars as pl

from benchmarks.contamination.datatrove_peer import datatrove_pairs
from benchmarks.contamination.decon_peer import TUNED, PeerUnavailable, decon_pairs
from benchmarks.runner import commit, machine
from curate.contamination.ngram_rules import ngram_pairs
from curate.studies.notes import keep_notes
from stride_engine.artifacts import atomic_write_text

SHARED = Path("../shared/data")


def ngram_rule(items: pl.DataFrame, corpus: list[dict], n: int, with_answer: bool) -> pl.DataFrame:
    """(item_id, doc_id) pairs sharing any n-gram of lower-cased words: the GPT-3 / open-r1 rule (curate.contamination.ngram_rules)."""
    return ngram_pairs(items.rename({"item_id": "id"}).iter_rows(named=True), corpus, n, with_answer)


def score(method: str, pairs: pl.DataFrame, truth: pl.DataFrame, kinds: pl.DataFrame, context: dict) -> list[dict]:
    """Rows: recall per kind of copy, then precision and the items' false positives over all."""
    truth_pairs = truth.select("item_id", "doc_id").unique()
    hit = truth.join(pairs.with_columns(pl.lit(True).alias("flagged")), on=["item_id", "doc_id"], how="left")
    rows = [
        {**context, "method": method, "kind": r["kind"], "copies": r["copies"], "doc_recall": r["doc_recall"]}
        for r in hit.group_by("kind").agg(pl.len().alias("copies"), pl.col("flagged").fill_null(False).mean().alias("doc_recall"))
        .sort("kind").iter_rows(named=True)
    ]
    true_flags = pairs.join(truth_pairs, on=["item_id", "doc_id"], how="semi")
    flagged_items = set(pairs["item_id"])
    negatives = set(kinds.filter(pl.col("kind") == "none")["item_id"])
    injected = set(kinds.filter(pl.col("kind") != "none")["item_id"])
    rows.append({
        **context, "method": method, "kind": "all", "copies": len(truth), "doc_recall": hit["flagged"].fill_null(False).mean(),
        "doc_precision": len(true_flags) / len(pairs) if len(pairs) else None, "flagged_pairs": len(pairs),
        "item_recall": len(flagged_items & injected) / len(injected), "negative_items_flagged": len(flagged_items & negatives),
        "negative_items": len(negatives),
    })
    return rows


def run_case(rate: float, seed: int, folder: Path) -> list[dict]:
    python = sys.executable
    subprocess.run([python, "-m", "curate.contamination.inject", "--rate", str(rate), "--seed", str(seed), "--out", str(folder)],
                   check=True, capture_output=True)
    truth, kinds = pl.read_parquet(folder / "truth.parquet"), pl.read_parquet(folder / "items.parquet")
    benchmark = SHARED / "benchmarks" / "gsm8k_test.jsonl"
    items = pl.read_ndjson(benchmark).select("id", "question", "answer").rename({"id": "item_id"})
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
    context = {"rate": rate, "seed": seed, "documents": len(corpus)}
    started = time.perf_counter()
    subprocess.run([str(Path(python).parent / "curate"), "contamination", "--benchmark", str(benchmark), "--train",
                    str(folder / "corpus.jsonl"), "--out", str(folder / "audit"), "--quiet"], check=True, capture_output=True)
    audit_seconds = time.perf_counter() - started
    flagged = pl.read_parquet(folder / "audit" / "documents.parquet")
    rows = []
    for method, pairs in (
        ("audit, contaminated", flagged.filter(pl.col("level") == "contaminated").select("item_id", "doc_id")),
        ("audit, any flag", flagged.select("item_id", "doc_id")),
    ):
        rows += score(method, pairs, truth, kinds, {**context, "seconds": round(audit_seconds, 1)})
    for method, n, with_answer in (("13-gram (GPT-3)", 13, True), ("8-gram (open-r1)", 8, False)):
        started = time.perf_counter()
        pairs = ngram_rule(items, corpus, n, with_answer)
        rows += score(method, pairs, truth, kinds, {**context, "seconds": round(time.perf_counter() - started, 1)})
    for method, run, settings, workdir in (
        ("decon (defaults)", decon_pairs, None, "decon-defaults"),
        ("decon (tuned)", decon_pairs, TUNED, "decon-tuned"),
        ("datatrove NGramsDecont", datatrove_pairs, None, "datatrove"),
    ):
        started = time.perf_counter()
        try:
            pairs = run(items, folder / "corpus.jsonl", folder / workdir, settings)
        except PeerUnavailable as missing:
            click.echo(f"  skipping {method}: {missing}", err=True)
            continue
        rows += score(method, pairs, truth, kinds, {**context, "seconds": round(time.perf_counter() - started, 1)})
    return rows


def markdown(rows: list[dict], command: str, stamp: str) -> str:
    frame = pl.DataFrame(rows)
    lines = ["# Contamination audit, model-free signals: the audit against the n-gram rules, decon and datatrove", "",
             f"Made by `{command}` at commit {stamp}, on {machine()['cpus']} CPUs. Corpora from "
             "`python -m curate.contamination.inject` (GSM8K test items into the shared four-domain corpus).", "",
             "## Recall of injected copies, per kind (documents; mean over rates and seeds)", ""]
    per_kind = frame.filter(pl.col("kind") != "all").group_by("method", "kind").agg(pl.col("doc_recall").mean())
    kinds = sorted(per_kind["kind"].unique())
    methods = list(dict.fromkeys(frame["method"]))
    lines += ["| method | " + " | ".join(kinds) + " |", "| --- |" + " ---: |" * len(kinds)]
    for method in methods:
        values = {r["kind"]: r["doc_recall"] for r in per_kind.filter(pl.col("method") == method).iter_rows(named=True)}
        lines.append(f"| {method} | " + " | ".join(f"{values.get(k, float('nan')):.3f}" for k in kinds) + " |")
    lines += ["", "## Every case", "",
              "| rate | seed | method | doc recall | doc precision | flagged pairs | item recall | never-injected items flagged | seconds |",
              "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in frame.filter(pl.col("kind") == "all").iter_rows(named=True):
        lines.append(f"| {r['rate']} | {r['seed']} | {r['method']} | {r['doc_recall']:.3f} | {r['doc_precision']:.3f} | "
                     f"{r['flagged_pairs']} | {r['item_recall']:.3f} | {r['negative_items_flagged']} / {r['negative_items']} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--rates", default="0.005,0.01,0.015", show_default=True)
@click.option("--seeds", default="0,1", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results/contamination_lexical"), show_default=True)
def main(rates: str, seeds: str, out: Path) -> None:
    if not (SHARED / "corpus").is_dir():
        raise click.ClickException(f"this benchmark needs the shared corpus at {SHARED} (absent on a plain clone)")
    stamp = commit()
    command = "python -m benchmarks.contamination.lexical_bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory(prefix="curate-contamination-") as scratch:
        for rate in map(float, rates.split(",")):
            for seed in map(int, seeds.split(",")):
                click.echo(f"rate {rate}, seed {seed}")
                rows += [{**r, "commit": stamp, "command": command} for r in run_case(rate, seed, Path(scratch) / f"{rate}-{seed}")]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(rows, indent=1) + "\n")
    report = out.with_suffix(".md")
    atomic_write_text(report, keep_notes(report, markdown(rows, command, stamp), stamp))
    click.echo(f"results: {out.with_suffix('.json')}\nreport: {report}")


if __name__ == "__main__":
    main()
