"""Does a reading of influence depend on the target? Each rule and weighting on the demo corpus's runs, for a target
the corpus teaches (arithmetic problems) and for a null target drawn like the whole corpus, with no retraining.

A reading that moves a domain as far for the null target as for the arithmetic one is reading something of the run,
not of the target. The runs are benchmarks/reweight_demo_check.py's: the quick demo corpus fit with the cpu-smoke
preset, and the same corpus with a planted noise domain (tests/test_reweight_planted.py's), each fitted once.

    python benchmarks/reweight_null_check.py        # about 5 minutes on 2 cores, the runs fitted; more to fit them

Writes benchmarks/results/reweight_null.{json,md}: per run, target, rule and weighting, each domain's weight over
its natural one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "reweight_null.json"
RULES = ("positive", "mean", "topk-hits", "domain-regression", "domain-operators")
WEIGHTINGS = ("tilt", "proportional")


def main() -> None:
    from benchmarks.reweight_demo_check import WORK, arithmetic_target, fitted_demo_run, fitted_noisy_demo_run, null_target
    from curate.reweight.mixture import compute_mixture
    from curate.reweight.request import ReweightRequest
    from curate.studies.notes import keep_notes
    from curate.studies.results import commit, machine

    started = time.perf_counter()
    _, clean = fitted_demo_run()
    _, noisy = fitted_noisy_demo_run()
    targets = {"arithmetic": arithmetic_target(WORK / "sums.jsonl"), "null (like the corpus)": null_target(WORK / "like.jsonl")}
    rows = []
    for run_name, run in (("demo", clean), ("demo + planted noise", noisy)):
        for target_name, target in targets.items():
            for rule in RULES:
                for weighting in WEIGHTINGS:
                    record, _, _ = compute_mixture(ReweightRequest(run=str(run), target=str(target), out=str(WORK / "unused"),
                                                                   rule=rule, weighting=weighting, guard="none"))
                    rows.append({"task": "reweight-null", "run": run_name, "target": target_name, "rule": rule,
                                 "weighting": weighting,
                                 "ratio": {d["domain"]: round(d["weight"] / d["natural"], 3) for d in record["domains"]}})
    stamp = {"commit": commit(), "machine": machine(), "command": "python benchmarks/reweight_null_check.py",
             "seconds": round(time.perf_counter() - started, 1)}
    RESULTS.write_text(json.dumps([{**row, **stamp} for row in rows], indent=1))
    RESULTS.with_suffix(".md").write_text(keep_notes(RESULTS.with_suffix(".md"), report(rows, stamp), stamp["commit"]))
    print(RESULTS.with_suffix(".md").read_text())


def report(rows: list[dict], stamp: dict) -> str:
    lines = [f"# Does the reading depend on the target? (demo corpus, no retraining)\n\nMade by `{stamp['command']}` at "
             f"{stamp['commit']} ({stamp['seconds']:.0f} s). Each domain's weight over its natural weight (1: unchanged). "
             "The null target is drawn like the whole corpus: a reading of the target leaves it near 1 everywhere.\n"]
    for run in dict.fromkeys(r["run"] for r in rows):
        here = [r for r in rows if r["run"] == run]
        domains = list(here[0]["ratio"])
        lines += [f"## {run}\n", "| target | rule | weighting | " + " | ".join(domains) + " |",
                  "| --- | --- | --- | " + " | ".join("---:" for _ in domains) + " |"]
        for r in here:
            lines.append(f"| {r['target']} | {r['rule']} | {r['weighting']} | " + " | ".join(f"{r['ratio'][d]:.2f}" for d in domains) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
