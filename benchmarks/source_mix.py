"""How much can the right mix of sources win on the mixed target? A reference that uses the source labels
(README, "Does influence-based selection help?").

The mixed target is a third each of tales, Shakespeare and GSM8K problems, where the mean over all queries ties with
random. This measures the headroom: random documents drawn from the target's own sources,
in the target's proportions (a third each; the math third from GSM8K train), against random documents in the
pool's natural mix without Wikipedia, at the study's budgets, proxies trained and scored as in the study. And it
asks whether STRIDE's ranking helps once the mix is right, without labels: each target item (its windows
together) is placed in the STRIDE run's nearest recovery group by the reference model's pooled states, each group
gets the budget in proportion to the items placed in it, and inside a group STRIDE's mean score ranks:

    python -m benchmarks.source_mix runs/select_pretraining_mix   # after `curate recipe recipes/select_pretraining_mix.yaml`

Writes benchmarks/results/source_mix.{json,md}; random and the study's other mixed-target rows (COMPARED) are the
study's own (benchmarks/results/selection.json), with as many seeds (the recipe's proxy.target_seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from curate.studies.proxies import proxy_job, run_proxy_jobs
from curate.studies.recipe import load_recipe
from curate.core.run import Run, document_influence
from curate.select import prepare_target
from curate.studies.notes import keep_notes
from curate.studies.results import against_reference
from stride_engine.artifacts import atomic_write_text
from stride_engine.groups import nearest_group

from .runner import commit
from .selection_diagnostics import latest_run

OUT = Path(__file__).parent / "results" / "source_mix.json"
STUDY_RESULTS = Path(__file__).parent / "results" / "selection.json"
TARGET = "mixed"
COMPARED = ("random", "stride", "stride-proportional", "stride-balanced", "bm25-balanced")  # the study's rows shown beside
MIXES = {  # pool domain -> share of the budget
    "target's sources, equal thirds": {"tales": 1 / 3, "shakespeare": 1 / 3, "math": 1 / 3},
    "the pool's mix without wiki": {"tales": 400 / 1800, "shakespeare": 600 / 1800, "math": 800 / 1800},
}


def main(study: Path, recipe_path: Path, out: Path = OUT, workers: int = 2) -> Path:
    started = time.perf_counter()
    recipe = load_recipe(recipe_path)
    pool = pl.read_ndjson(study / "data" / "pool.jsonl")
    tasks = [f"target_{TARGET}", *(f"domain_{d}" for d in sorted(pool["domain"].unique()))]
    totals = {budget: round(float(budget.rstrip("%")) / 100 * len(pool)) for budget in recipe["selection"]["budgets"]}
    seeds = (recipe["proxy"].get("target_seeds") or {}).get(TARGET, recipe["proxy"]["seeds"])  # as the study's
    jobs, rows = [], []
    for budget, total in totals.items():
        for label, mix in MIXES.items():
            slug = label.split(",")[0].replace("'", "").replace(" ", "-")
            for seed in seeds:
                parts = [pool.filter(pl.col("domain") == d).sample(round(total * share), seed=seed) for d, share in mix.items()]
                data = study / "source-mix" / budget.replace("%", "pct") / slug / f"seed{seed}.jsonl"
                data.parent.mkdir(parents=True, exist_ok=True)
                pl.concat(parts).write_ndjson(data)
                key = f"source-mix/{budget.replace('%', 'pct')}/{slug}/proxy-seed{seed}"
                jobs.append(proxy_job(key, data, study, study / "base", recipe, seed, tasks, study / "tasks"))
                rows.append({"task": "source-mix", "target": TARGET, "budget": budget, "method": label, "seed": seed,
                             "selected_per_domain": {d: round(total * share) for d, share in mix.items()}, "job": key})
    in_target_mix = stride_in_target_mix(study, list(totals.values()))
    for budget, total in totals.items():
        chosen = in_target_mix[total]
        data = study / "source-mix" / budget.replace("%", "pct") / "stride-in-target-mix" / "selected.jsonl"
        data.parent.mkdir(parents=True, exist_ok=True)
        selection = pool.filter(pl.col("id").is_in(chosen))
        selection.write_ndjson(data)
        mix = selection["domain"].value_counts().sort("domain")
        for seed in seeds:
            key = f"source-mix/{budget.replace('%', 'pct')}/stride-in-target-mix/proxy-seed{seed}"
            jobs.append(proxy_job(key, data, study, study / "base", recipe, seed, tasks, study / "tasks"))
            rows.append({"task": "source-mix", "target": TARGET, "budget": budget, "seed": seed, "job": key,
                         "method": "target's mix from the model's states (no labels), STRIDE inside each group",
                         "selected_per_domain": dict(mix.iter_rows())})
    measured = run_proxy_jobs(jobs, workers)
    for row in rows:
        values = measured[row.pop("job")]["values"]
        row["target_ppl"] = values[f"target_{TARGET}|word_perplexity"]
        row["domain_ppl"] = {t.removeprefix("domain_"): values[f"{t}|word_perplexity"] for t in tasks[1:]}
    context = {"commit": commit(), "command": f"python -m benchmarks.source_mix {study}",
               "seconds": round(time.perf_counter() - started)}
    rows = [{**row, **context} for row in rows]
    table = markdown(rows, json.loads(STUDY_RESULTS.read_text()))  # before anything is written
    atomic_write_text(out, json.dumps(rows, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), keep_notes(out.with_suffix(".md"), table, context["commit"]))  # notes stay
    return out


def stride_in_target_mix(study: Path, totals: list[int]) -> dict[int, list[str]]:
    """For each total, that many document ids: the budget shared across the run's recovery groups by where the
    target's items fall (groups.nearest_group; an item's windows count once together), STRIDE's mean score first
    inside each group; what a group too small for its share leaves goes to the best remaining documents."""
    run = latest_run(study)
    opened, spec = Run(run), str(study / "data" / f"target-{TARGET}.jsonl")
    stride = opened.engine
    store, target = prepare_target(opened, spec, [])
    items = np.array([query.split("#")[0] for query in target.queries.ids])
    names, counts = np.unique(items, return_counts=True)
    weight = 1.0 / counts[np.searchsorted(names, items)]
    groups = stride.groups()
    placed = nearest_group(stride.pooled_states(), groups, stride.pooled_states(target.queries))
    share = np.bincount(placed, weights=weight, minlength=int(groups.max()) + 1) / weight.sum()
    ranked = document_influence(store, "mean").join(opened.document_groups(), on="doc_id").sort(
        ["influence", "doc_id"], descending=[True, False]).with_columns(place=pl.int_range(pl.len()).over("group"))
    chosen = {}
    for total in totals:
        quota = pl.col("group").replace_strict(list(range(len(share))), np.round(share * total).astype(int).tolist(),
                                               return_dtype=pl.Int64)
        kept = ranked.filter(pl.col("place") < quota)["doc_id"].head(total).to_list()
        chosen[total] = kept + ranked.filter(~pl.col("doc_id").is_in(kept))["doc_id"].head(total - len(kept)).to_list()
    return chosen


def markdown(rows: list[dict], study_rows: list[dict]) -> str:
    lines = [
        "# The mixed target's headroom: the right mix of sources, drawn at random (source labels used)",
        "",
        f"Made by `{rows[0]['command']}` at commit {rows[0]['commit']} ({rows[0]['seconds'] / 60:.0f} min).",
        "",
        f"Target word perplexity of proxies trained as in the selection study, mean ± std over {len({r['seed'] for r in rows})} seeds (one draw per seed);",
        "vs random: the change of the mean and Welch's t-test of log perplexities against the study's random selections.",
        "",
        "## Results",  # the hand-written notes (curate.studies.notes) go before it
        "",
        "| budget | selection | target ppl | vs random | documents per domain |",
        "| --- | --- | --- | --- | --- |",
    ]
    compared = [r for r in study_rows if r["target"] == TARGET and r["method"] in COMPARED]
    for budget in dict.fromkeys(r["budget"] for r in rows):
        random = [r["target_ppl"] for r in compared if r["budget"] == budget and r["method"] == "random"]
        groups: dict[str, list[dict]] = {}
        for r in [*rows, *compared]:
            if r["budget"] == budget:
                groups.setdefault(r["method"], []).append(r)
        for method, mine in groups.items():
            values = pl.Series([r["target_ppl"] for r in mine])
            change = "" if method == "random" else against_reference(values.to_list(), random)
            mix = ", ".join(f"{d} {n}" for d, n in (mine[0].get("selected_per_domain") or {}).items())
            lines.append(f"| {budget} | {method} | {values.mean():,.0f} ± {values.std():,.0f} | {change} | {mix} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, nargs="?", default=Path("runs/select_pretraining_mix"))
    parser.add_argument("--recipe", type=Path, default=Path("recipes/select_pretraining_mix.yaml"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(main(args.study, args.recipe, workers=args.workers))
