"""The own-domain check that `curate reweight --rule auto` runs before it trusts the design's domain-level reading, on
three fitted runs: the reweighting study's (the shared four-domain corpus, recipes/reweight_pretraining_mix.yaml), the
demo corpus's (benchmarks/reweight_demo_check.py's run) and the demo corpus with a planted noise domain (the run of
tests/test_reweight_planted.py).

Per domain: what one more token of it does to 32 of its own chunks, each held out of the subsets holding its document,
beyond what the domains do on average (curate.reweight.domain_effects.own_domain_check), and the reading `auto` takes.
Which reading wins on each corpus by retraining is in reweight_rule.md and reweight_demo.md. On the two demo runs it
also reweights for the tests' arithmetic target with `domain-regression`: a reading the check lets through should
raise the arithmetic domain, which alone teaches that target.

    python benchmarks/reweight_own_domain.py     # minutes when both runs are fitted; else it fits them (~30 min)

Writes benchmarks/results/reweight_own_domain.{json,md}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from curate.reweight.domain_effects import DOMAIN_REGRESSION

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "reweight_pretraining_mix.yaml"
RESULTS = Path(__file__).resolve().parent / "results" / "reweight_own_domain.json"
SEEDS = (0, 1, 2)  # draws of the held-out chunks


def _study_run() -> Path:
    from curate.studies.recipe import load_recipe, prepare_study

    recipe = load_recipe(RECIPE, False)
    recipe["progress"] = False
    return prepare_study(recipe, False).run


def _demo_run() -> Path:
    from benchmarks.reweight_demo_check import fitted_demo_run

    return fitted_demo_run()[1]


def _noisy_run() -> Path:
    from benchmarks.reweight_demo_check import fitted_noisy_demo_run

    return fitted_noisy_demo_run()[1]


def _arithmetic_weight(run: Path) -> dict:
    """Arithmetic's weight against its natural share when the tests' arithmetic target is read off the design."""
    from benchmarks.reweight_demo_check import WORK, arithmetic_target
    from curate.reweight import ReweightRequest, run_reweight

    (WORK / "own-domain").mkdir(parents=True, exist_ok=True)
    target = arithmetic_target(WORK / "own-domain" / "sums.jsonl")
    out = WORK / "own-domain" / run.name
    manifest = run_reweight(ReweightRequest(run=str(run), target=str(target), out=str(out), rule=DOMAIN_REGRESSION, guard="none"),
                            overwrite=True)
    arithmetic = next(d for d in manifest["weights"]["domains"] if d["domain"] == "arithmetic")
    return {"weight": arithmetic["weight"], "natural": arithmetic["natural"]}


def main() -> None:
    from curate.core.run import Run
    from curate.reweight.domain_effects import own_domain_check, pooled_z, trusts_domain_reading
    from curate.reweight.request import AUTO_FALLBACK
    from curate.studies.results import commit, machine

    started = time.perf_counter()
    rows = []
    planted = {}
    for corpus, locate in (("shared corpus (study)", _study_run), ("demo corpus", _demo_run),
                           ("demo corpus + planted noise", _noisy_run)):
        root = locate()
        run = Run(root)
        if corpus.startswith("demo"):
            planted[corpus] = _arithmetic_weight(root)
        documents = run.document_tokens().join(run.document_domains(), on="doc_id")
        for seed in SEEDS:  # `auto` uses seed 0; the others show how much the draw of chunks moves the check
            began = time.perf_counter()
            check = own_domain_check(run, documents, seed=seed)
            seconds = time.perf_counter() - began
            reading = DOMAIN_REGRESSION if trusts_domain_reading(check) else AUTO_FALLBACK
            rows.append({"task": "reweight-own-domain", "corpus": corpus, "seed": seed, "domains": check.to_dicts(),
                         "pooled_z": pooled_z(check), "reading": reading, "seconds": round(seconds, 1)})
    stamp = {"commit": commit(), "machine": machine(), "command": "python benchmarks/reweight_own_domain.py",
             "total_seconds": round(time.perf_counter() - started, 1)}
    rows += [{"task": "reweight-own-domain-target", "corpus": corpus, "target": "arithmetic", "rule": DOMAIN_REGRESSION,
              "arithmetic": weight} for corpus, weight in planted.items()]
    RESULTS.write_text(json.dumps([{**row, **stamp} for row in rows], indent=1))
    RESULTS.with_suffix(".md").write_text(report(rows, stamp))
    print(RESULTS.with_suffix(".md").read_text())


def report(rows: list[dict], stamp: dict) -> str:
    targets = [r for r in rows if r["task"] == "reweight-own-domain-target"]
    rows = [r for r in rows if r["task"] == "reweight-own-domain"]
    domains = {r["corpus"]: [d["domain"] for d in r["domains"]] for r in rows}
    lines = [f"# The own-domain check (`curate reweight --rule auto`)\n\nMade by `{stamp['command']}` at {stamp['commit']} "
             f"({stamp['total_seconds']:.0f} s). Per domain, z of the effect of one more token of it on 32 of its own "
             "chunks, held out by membership, beyond the domains' mean effect on them (positive: the domain helps its "
             "own text more than the others do); pooled: Stouffer's combination, which `auto` needs above 1.96 to read "
             "the target off the design. Seed: the draw of the chunks (`auto` uses 0). Time: the check's, in this "
             "invocation (responses kept in a run from an earlier call are not measured again).\n"]
    for corpus in domains:
        lines += [f"## {corpus}\n", "| seed | " + " | ".join(domains[corpus]) + " | pooled z | `auto` reads | time (s) |",
                  "| --- | " + " | ".join("---:" for _ in domains[corpus]) + " | ---: | --- | ---: |"]
        for r in (r for r in rows if r["corpus"] == corpus):
            lines.append(f"| {r['seed']} | " + " | ".join(f"{d['z']:+.1f}" for d in r["domains"])
                         + f" | {r['pooled_z']:+.1f} | {r['reading']} | {r['seconds']:.0f} |")
        lines.append("")
    lines += ["## The arithmetic target read off the design (`--rule domain-regression`)\n",
              "The tests' 30 arithmetic problems; only the arithmetic domain teaches them.\n",
              "| run | arithmetic weight | natural | ratio |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {t['corpus']} | {t['arithmetic']['weight']:.3f} | {t['arithmetic']['natural']:.3f} | "
              f"{t['arithmetic']['weight'] / t['arithmetic']['natural']:.2f} |" for t in targets]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
