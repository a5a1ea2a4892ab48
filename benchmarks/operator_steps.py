"""How long to train the operators: STRIDE-logit's LDS against its step count on the two classifier settings, the
one its configuration was tuned on (digits) and the one nothing was tuned on (cancer), over design seeds.

Everything but `steps` (and the seed) is the benchmark's digits configuration (suites.DIGITS_STRIDE: K = 512, d = 8,
64 operators per step with 4 members each). The ground truth is the committed one (results/ground_truth/).

    python benchmarks/operator_steps.py      # about 6 minutes on 2 cores

Writes benchmarks/results/operator_steps.{json,md}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "operator_steps.json"
SETTINGS = ("digits", "cancer")
STEPS = (100, 300, 1000, 3000)
SEEDS = (0, 1, 3)  # seed 2 leaves one of cancer's 512 subsets empty at d = 8 (469 examples): refused by the engine


def main() -> None:
    from benchmarks.ground_truth import load_or_compute
    from benchmarks.methods.stride import stride
    from benchmarks.metrics import lds, queries_without_scores
    from benchmarks.settings import build_setting
    from benchmarks.suites import DIGITS_STRIDE, FULL
    from curate.studies.notes import keep_notes
    from curate.studies.results import commit, machine

    torch.set_num_threads(2)
    started = time.perf_counter()
    rows = []
    for name in SETTINGS:
        setting = build_setting(name, "full")
        plan = next(p for p in FULL.settings if p.setting == name)
        truth = load_or_compute(setting, RESULTS.parent / "ground_truth", plan.lds_subsets, plan.fraction, seed=0,
                                shared_init=plan.shared_init)
        for steps in STEPS:
            for seed in SEEDS:
                began = time.perf_counter()
                scores = stride(setting, form="logit", **{**DIGITS_STRIDE, "steps": steps, "seed": seed})
                rows.append({"task": "operator-steps", "setting": name, "steps": steps, "seed": seed,
                             "lds_mean": float(lds(scores, truth).mean()), "queries_without_scores": queries_without_scores(scores),
                             "seconds": round(time.perf_counter() - began, 1)})
                print(rows[-1], flush=True)
    stamp = {"commit": commit(), "machine": machine(), "command": "python benchmarks/operator_steps.py",
             "total_seconds": round(time.perf_counter() - started, 1)}
    RESULTS.write_text(json.dumps([{**row, **stamp} for row in rows], indent=1))
    RESULTS.with_suffix(".md").write_text(keep_notes(RESULTS.with_suffix(".md"), report(rows, stamp), stamp["commit"]))
    print(RESULTS.with_suffix(".md").read_text())


def report(rows: list[dict], stamp: dict) -> str:
    lines = [f"# Operator training length on the classifiers\n\nMade by `{stamp['command']}` at {stamp['commit']} "
             f"({stamp['total_seconds']:.0f} s). STRIDE-logit with the digits configuration (K = 512, d = 8, 64 "
             "operators per step, 4 members each) at each step count; LDS against the committed ground truth, mean "
             f"over design seeds {', '.join(map(str, SEEDS))} (± their standard deviation).\n",
             "| setting | " + " | ".join(f"{s} steps" for s in STEPS) + " |", "| --- |" + " ---: |" * len(STEPS)]
    for name in SETTINGS:
        cells = []
        for steps in STEPS:
            values = np.array([r["lds_mean"] for r in rows if r["setting"] == name and r["steps"] == steps])
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1):.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
