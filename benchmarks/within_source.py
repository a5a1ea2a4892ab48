"""Does STRIDE rank documents *within* a source? A selection study with the source held fixed (README, "Does
influence-based selection help?").

The selection study mixes two questions: which sources a target needs, and which documents of a source help it.
A classifier of sources answers the first. Here every selection takes the same number of documents from the
target's own source only, so the sources are equal and only the ranking inside the source differs:

    python -m benchmarks.within_source runs/select_pretraining_mix   # after `curate recipe recipes/select_pretraining_mix.yaml`

For each single-source target of the recipe (math: GSM8K train documents; wiki-military: Wikipedia sections) it
keeps the top `--documents` of that source by STRIDE (the run's mean and standardized rules), by BM25, and a random
draw of the same size (one per seed), trains a proxy on each with the recipe's settings and evaluates it on the
target's held-out items. Writes benchmarks/results/within_source.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl

from curate.studies.proxies import proxy_job, run_proxy_jobs
from curate.studies.recipe import load_recipe
from curate.select import influence_table
from curate.studies.notes import keep_notes
from curate.studies.results import against_reference
from stride_engine.artifacts import atomic_write_text

from .runner import commit
from .selection_diagnostics import latest_run

OUT = Path(__file__).parent / "results" / "within_source.json"
SOURCES = {"math": "math", "wiki-military": "wiki"}  # target -> the pool domain its items come from
RANKINGS = {"stride": ("stride", "mean"), "stride-standardized": ("stride", "standardized"), "bm25": ("bm25", "mean")}


def main(study: Path, recipe_path: Path, documents: int, out: Path = OUT, workers: int = 2, smoke: bool = False) -> Path:
    started = time.perf_counter()
    recipe = load_recipe(recipe_path, smoke)
    run = latest_run(study)
    pool = pl.read_ndjson(study / "data" / "pool.jsonl")
    folder = study / "within-source" / str(documents)
    jobs, rows = [], []
    for target, source in SOURCES.items():
        spec = str(study / "data" / f"target-{target}.jsonl")
        if not Path(spec).is_file():  # a study without this target (the smoke recipe has math only)
            continue
        own = pool.filter(pl.col("domain") == source)
        tasks = [f"target_{target.replace('-', '_')}", f"domain_{source}"]
        if documents > len(own):
            raise SystemExit(f"--documents {documents} is more than the {len(own)} {source} documents of the pool")
        picks = {}
        for label, (method, rule) in RANKINGS.items():
            table = influence_table(run, spec, rule, 10, [], method=method).filter(pl.col("domain") == source)
            picks[label] = table.sort(["influence", "doc_id"], descending=[True, False])["doc_id"].head(documents).to_list()
        for seed in recipe["proxy"]["seeds"]:
            picks[f"random-seed{seed}"] = own["id"].sample(documents, seed=seed).to_list()
        for label, ids in picks.items():
            data = folder / target / label / "selected.jsonl"
            data.parent.mkdir(parents=True, exist_ok=True)
            own.filter(pl.col("id").is_in(ids)).write_ndjson(data)
            seeds = [int(label.rsplit("seed", 1)[1])] if label.startswith("random") else recipe["proxy"]["seeds"]
            for seed in seeds:
                key = f"within-source/{documents}/{target}/{label}/proxy-seed{seed}"
                jobs.append(proxy_job(key, data, study, study / "base", recipe, seed, tasks, study / "tasks"))
                rows.append({"task": "within-source", "target": target, "source": source, "documents": documents,
                             "method": label.split("-seed")[0], "seed": seed, "job": key})
    measured = run_proxy_jobs(jobs, workers)
    for row in rows:
        values = measured[row.pop("job")]["values"]
        row["target_ppl"] = values[f"target_{row['target'].replace('-', '_')}|word_perplexity"]
        row["source_ppl"] = values[f"domain_{row['source']}|word_perplexity"]
    context = {"commit": commit(), "command": f"python -m benchmarks.within_source {study} --documents {documents}{' --smoke' if smoke else ''}",
               "run": run.name, "seconds": round(time.perf_counter() - started)}
    # Rows of other selection sizes stay: each size is one invocation, and the table shows them all.
    kept = [r for r in json.loads(out.read_text()) if r["documents"] != documents] if out.is_file() else []
    rows = kept + [{**row, **context} for row in rows]
    table = markdown(rows)  # made before anything is written: a failure leaves the results as they were
    atomic_write_text(out, json.dumps(rows, indent=1) + "\n")
    stamps = [r["commit"] for r in rows]  # one per size; the dirty paragraph is due when any of them is dirty
    dirty = next((c for c in stamps if c.endswith("-dirty")), stamps[0] if stamps else None)
    atomic_write_text(out.with_suffix(".md"), keep_notes(out.with_suffix(".md"), table, dirty))  # the notes stay
    return out


def markdown(rows: list[dict]) -> str:
    frame = pl.DataFrame(rows).sort("target", "documents", maintain_order=True)
    table = frame.group_by("target", "documents", "method", maintain_order=True).agg(
        ppl=pl.col("target_ppl").mean(), std=pl.col("target_ppl").std(), source_ppl=pl.col("source_ppl").mean(),
        seeds=pl.len(), source=pl.col("source").first(),
    )
    made = frame.group_by("command", maintain_order=True).agg(pl.col("commit").first(), pl.col("run").first(), pl.col("seconds").first())
    lines = [
        "# Within one source: does STRIDE rank a source's documents?",
        "",
        *[f"Made by `{m['command']}` at commit {m['commit']} on run `{m['run']}` ({m['seconds'] / 60:.0f} min)."
          for m in made.iter_rows(named=True)],
        "",
        "Every selection holds the same number of documents, all from the target's own source; a proxy is trained on each",
        "(the selection study's settings) and scored on the target's held-out items: word perplexity, mean ± std over",
        "proxy seeds (random: one draw per seed). Lower is better. vs random: the change of the mean, and Welch's t-test",
        "of the seeds' log perplexities against random's.",
        "",
        "## Results",  # the hand-written notes (curate.studies.notes) go before it
        "",
        "| target | documents (source) | method | target ppl | vs random | source held-out ppl |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for target, documents in dict.fromkeys(zip(table["target"], table["documents"])):
        part = table.filter((pl.col("target") == target) & (pl.col("documents") == documents))
        cell = frame.filter((pl.col("target") == target) & (pl.col("documents") == documents))
        seeds = {method: rows["target_ppl"].to_list() for (method,), rows in cell.partition_by("method", as_dict=True).items()}
        for r in part.iter_rows(named=True):
            change = "" if r["method"] == "random" else against_reference(seeds[r["method"]], seeds["random"])
            spread = f" ± {r['std']:,.0f}" if r["std"] is not None else ""  # one seed: no spread
            lines.append(f"| {target} | {r['documents']} ({r['source']}) | {r['method']} | {r['ppl']:,.0f}{spread} | "
                         f"{change} | {r['source_ppl']:,.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, nargs="?", default=Path("runs/select_pretraining_mix"))
    parser.add_argument("--recipe", type=Path, default=Path("recipes/select_pretraining_mix.yaml"))
    parser.add_argument("--documents", type=int, default=200, help="documents per selection, all from the target's source")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="the recipe's smoke settings; results go to the study folder")
    args = parser.parse_args()
    out = args.study / "within_source.json" if args.smoke else OUT
    print(main(args.study, args.recipe, args.documents, out, args.workers, args.smoke))
