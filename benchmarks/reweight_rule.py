"""How `curate reweight`'s own settings were chosen: each variant's weights trained into proxies at the study's budget.

On the reweighting study's setup (recipes/reweight_pretraining_mix.yaml: its corpus, its fitted STRIDE run, its proxies
and 5 paired seeds; every stage it has cached is reused), each variant of the rule (how influence is read per domain,
the mode, eta) gives a mixture; the pool is resampled to it and a proxy trained on it per seed, and lm-eval scores
each on the target's evaluation items. Choices are made on the `mixed` target; `wiki-military` is the check.

    python benchmarks/reweight_rule.py                       # about 15 minutes on 2 cores with the study's stages cached
    python benchmarks/reweight_rule.py --smoke               # the recipe's smoke tier (CI-sized)
    python benchmarks/reweight_rule.py --variants operators  # the domain-operators reading, beside the grid's best points
    python benchmarks/reweight_rule.py --variants smoothing  # that reading at more smoothing (the macro bpb's price)
    python benchmarks/reweight_rule.py --variants guard      # that reading with and without the macro guard

Writes benchmarks/results/reweight_rule.{json,md}, or reweight_<variants>.{json,md} for the other --variants (with
--smoke: under the smoke study's output folder).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "reweight_pretraining_mix.yaml"
RESULTS = Path(__file__).resolve().parent / "results" / "reweight_rule.json"

# (target, label, request settings); `rule` is how influence is read per domain (curate.reweight.request.RULES) and
# `weighting` how it becomes weights, both named in every variant so that a change of the default does not change what
# a variant is (the committed results were made when the default weighting was the tilt; it is now proportional)
VARIANTS = [
    ("mixed", "positive, target", {"rule": "positive", "mode": "target", "weighting": "tilt"}),
    ("mixed", "positive, average", {"rule": "positive", "mode": "average", "weighting": "tilt"}),
    ("mixed", "mean, target", {"rule": "mean", "mode": "target", "weighting": "tilt"}),
    ("mixed", "mean, average", {"rule": "mean", "mode": "average", "weighting": "tilt"}),
    ("mixed", "mean, worst", {"rule": "mean", "mode": "worst", "weighting": "tilt"}),
    ("mixed", "regression, target", {"rule": "domain-regression", "mode": "target", "weighting": "tilt"}),
    ("mixed", "regression, average", {"rule": "domain-regression", "mode": "average", "weighting": "tilt"}),
    ("mixed", "regression, worst", {"rule": "domain-regression", "mode": "worst", "weighting": "tilt"}),
    ("mixed", "topk-hits, average", {"rule": "topk-hits", "mode": "average", "weighting": "tilt"}),
    ("mixed", "proportional: positive, average", {"rule": "positive", "mode": "average", "weighting": "proportional"}),
    ("mixed", "proportional: mean, average", {"rule": "mean", "mode": "average", "weighting": "proportional"}),
    ("mixed", "proportional: regression, average", {"rule": "domain-regression", "mode": "average", "weighting": "proportional"}),
    ("wiki-military", "positive, target", {"rule": "positive", "mode": "target", "weighting": "tilt"}),
    ("wiki-military", "mean, target", {"rule": "mean", "mode": "target", "weighting": "tilt"}),
    ("wiki-military", "regression, target", {"rule": "domain-regression", "mode": "target", "weighting": "tilt"}),
    ("wiki-military", "topk-hits, target", {"rule": "topk-hits", "mode": "target", "weighting": "tilt"}),
    ("wiki-military", "proportional: positive, target", {"rule": "positive", "mode": "target", "weighting": "proportional"}),
    ("wiki-military", "proportional: mean, target", {"rule": "mean", "mode": "target", "weighting": "proportional"}),
    ("wiki-military", "proportional: regression, target", {"rule": "domain-regression", "mode": "target", "weighting": "proportional"}),
]
# The reading from operators trained on whole domains (curate.reweight.domain_operators), in both weightings, beside
# the grid's best mixture of each target (reweight.md: all Wikipedia for wiki-military; 0 / 0.5 / 0.25 / 0.25 wiki /
# shakespeare / tales / math for mixed) trained on the same seeds, so the gap to the grid is closed or not on one run
OPERATOR_VARIANTS = [
    ("mixed", "operators, proportional, average", {"rule": "domain-operators", "mode": "average", "weighting": "proportional"}),
    ("mixed", "operators, proportional, target", {"rule": "domain-operators", "mode": "target", "weighting": "proportional"}),
    ("mixed", "operators, tilt, average", {"rule": "domain-operators", "mode": "average", "weighting": "tilt"}),
    ("wiki-military", "operators, proportional, target", {"rule": "domain-operators", "mode": "target", "weighting": "proportional"}),
    ("wiki-military", "operators, tilt, target", {"rule": "domain-operators", "mode": "target", "weighting": "tilt"}),
]
# How far the smoothing (the prior's share mixed back) trades the target's gain for the other domains' bits per byte
SMOOTHING_VARIANTS = [
    ("mixed", f"operators, proportional, average, smoothing {v}", {"rule": "domain-operators", "mode": "average", "weighting": "proportional", "smoothing": v})
    for v in (0.5,)] + [
    ("wiki-military", f"operators, proportional, target, smoothing {v}", {"rule": "domain-operators", "mode": "target", "weighting": "proportional", "smoothing": v})
    for v in (0.5, 0.8)]
# The guards (curate.reweight.weights.macro_guard): the domain-operators mixture moved towards the domains' own optimum
# until their predicted mean loss is no worse than natural's, the slopes assumed alike (macro) or read from the doses on
# held-out chunks (measured); beside the unguarded reading, on the two targets the reading was designed on and on gsm8k,
# the target added after it
GUARD_VARIANTS = [
    (target, f"operators, proportional, {mode}{f', guard {guard}' if guard else ''}",
     {"rule": "domain-operators", "mode": mode, "weighting": "proportional", **({"guard": guard} if guard else {})})
    for target, mode in (("mixed", "average"), ("wiki-military", "target"), ("gsm8k", "target"))
    for guard in (None, "measured", "macro")] + [
    # the macro guard needs no measurement: the default reading and the BM25 ablation under it, for a comparison at the
    # same constraint on the other domains
    (target, f"{label}{', guard macro' if guard else ''}", {**settings, "mode": mode, **({"guard": "macro"} if guard else {})})
    for target, mode in (("mixed", "average"), ("wiki-military", "target"), ("gsm8k", "target"))
    for label, settings in (("positive, proportional", {"rule": "positive", "weighting": "proportional"}),
                            ("similarity (bm25), proportional", {"method": "bm25", "rule": "positive", "weighting": "proportional"}))
    for guard in (False, True)]
FIXED = {"operators": [("mixed", "grid-best", {"wiki": 0.0, "shakespeare": 0.5, "tales": 0.25, "math": 0.25}),
                       ("wiki-military", "grid-best", {"wiki": 1.0, "shakespeare": 0.0, "tales": 0.0, "math": 0.0})]}
SETS = {"rule": (VARIANTS, RESULTS), "operators": (OPERATOR_VARIANTS, RESULTS.with_name("reweight_operators.json")),
        "smoothing": (SMOOTHING_VARIANTS, RESULTS.with_name("reweight_smoothing.json")),
        "guard": (GUARD_VARIANTS, RESULTS.with_name("reweight_guard.json"))}
BASELINES = ("natural", "uniform")


def main() -> None:
    from curate.reweight.mixture import compute_mixture
    from curate.reweight.request import ReweightRequest
    from curate.reweight.study import _Plan
    from curate.studies.proxies import run_proxy_jobs
    from curate.studies.recipe import load_recipe, prepare_study, task_name
    from curate.studies.notes import keep_notes
    from curate.studies.results import commit, machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--variants", choices=sorted(SETS), default="rule")
    args = parser.parse_args()
    chosen, results = SETS[args.variants]
    started = time.perf_counter()
    recipe = load_recipe(RECIPE, args.smoke)
    recipe["progress"] = False
    study = prepare_study(recipe, args.smoke)
    plan = _Plan(study)
    targets = study.files["targets"]
    seeds = recipe["proxy"]["seeds"]
    variants = [(t, label, settings) for t, label, settings in chosen if t in targets]
    mixtures = []
    for target in sorted({t for t, _, _ in variants}):
        mixtures += [(target, "natural", plan.natural), (target, "uniform", np.full(len(plan.domains), 1 / len(plan.domains)))]
    for target, label, settings in variants:
        record, _, _ = compute_mixture(ReweightRequest(run=str(study.run), target=targets[target], out=str(study.out / "unused"),
                                                       tokens=str(plan.budget), max_epochs=4.0, **{"guard": "none", **settings}))
        by_domain = {d["domain"]: d["weight"] for d in record["domains"]}
        mixtures.append((target, label, np.array([by_domain[d] for d in plan.domains])))
    for target, label, given in FIXED.get(args.variants, []):
        if target in targets:
            mixtures.append((target, label, np.array([given[d] for d in plan.domains])))
    jobs = {(target, label, seed): plan.job(weights, seed) for target, label, weights in mixtures for seed in seeds}
    measured = run_proxy_jobs(list({job["key"]: job for job in jobs.values()}.values()), recipe.get("workers", 2))
    rows = []
    for (target, label, seed), job in jobs.items():
        weights = next(w for t, l, w in mixtures if t == target and l == label)
        rows.append({"task": "reweight-rule", "target": target, "variant": label, "seed": seed,
                     "weights": {d: round(float(w), 4) for d, w in zip(plan.domains, weights)},
                     "target_bpb": measured[job["key"]]["values"][f"{task_name('target', target)}|bits_per_byte"],
                     "domain_bpb": {d: measured[job["key"]]["values"][f"{task_name('domain', d)}|bits_per_byte"] for d in plan.domains}})
    stamp = {"commit": commit(), "machine": machine(), "smoke": args.smoke,
             "command": "python benchmarks/reweight_rule.py" + (" --smoke" if args.smoke else "")
                        + (f" --variants {args.variants}" if args.variants != "rule" else ""),
             "seconds": round(time.perf_counter() - started, 1)}
    destination = study.out / results.name if args.smoke else results
    destination.write_text(json.dumps([{**row, **stamp} for row in rows], indent=1))
    destination.with_suffix(".md").write_text(keep_notes(destination.with_suffix(".md"), report(rows, stamp, plan.domains), stamp["commit"]))
    print(destination.with_suffix(".md").read_text())


def macro(rows: list[dict]) -> float:
    """The mean over seeds of the held-out domains' mean bits per byte."""
    return float(np.mean([np.mean(list(r["domain_bpb"].values())) for r in rows]))


def report(rows: list[dict], stamp: dict, domains: tuple[str, ...]) -> str:
    lines = [f"# Reweighting rule variants\n\nMade by `{stamp['command']}` at {stamp['commit']} ({stamp['seconds']:.0f} s).",
             "Target bits per byte on the evaluation items, mean over paired seeds (lower is better); the difference is "
             "paired against natural (± its standard error over seeds); macro: the held-out domains' mean bits per byte.\n"]
    for target in dict.fromkeys(r["target"] for r in rows):
        here = [r for r in rows if r["target"] == target]
        natural = {r["seed"]: r["target_bpb"] for r in here if r["variant"] == "natural"}
        lines += [f"## {target}\n", "| variant | " + " | ".join(domains) + " | target bpb | vs natural | macro bpb |",
                  "| --- | " + " | ".join("---" for _ in domains) + " | --- | --- | --- |"]
        for variant in dict.fromkeys(r["variant"] for r in here):
            mine = [r for r in here if r["variant"] == variant]
            values = np.array([r["target_bpb"] for r in mine])
            delta = np.array([r["target_bpb"] - natural[r["seed"]] for r in mine])
            weights = mine[0]["weights"]
            lines.append(f"| {variant} | " + " | ".join(f"{weights[d]:.3f}" for d in domains)
                         + f" | {values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f} | {delta.mean():+.3f} "
                         f"± {delta.std(ddof=1) / np.sqrt(len(delta)) if len(delta) > 1 else 0:.3f} | {macro(mine):.3f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
