"""Full-batch against stochastic operator training, at comparable wall time, on the two classifier settings: the
one the stochastic configuration was tuned on (digits) and the one nothing was tuned on (cancer).

Stochastic: the benchmark's digits configuration (suites.DIGITS_STRIDE: K = 512, d = 8, 64 operators per step with
4 members and 4 non-members each). Full batch: the same with `full_batch=True` (every operator on all of its
members each step, 4 non-members each), so a step costs n·d/512 + 4 times the rows of a stochastic one (cancer
~11×, digits ~24×, counting member and non-member rows). Each row: LDS against the committed ground truth, and the
seconds of the whole attribution (fit, responses, recovery) on this machine's 2 cores.

    python benchmarks/full_batch.py      # about 10 minutes on 2 cores

Writes benchmarks/results/full_batch.{json,md}.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "full_batch.json"
SETTINGS = ("digits", "cancer")
ARMS = {"stochastic": (300, 1000, 3000), "full batch": (10, 30, 100, 300)}
SEEDS = (0, 1, 2)


def main() -> None:
    from benchmarks.classifier_study import settings_with_truth, write_study
    from benchmarks.methods.stride import stride
    from benchmarks.metrics import lds, queries_without_scores
    from benchmarks.suites import DIGITS_STRIDE

    started = time.perf_counter()
    rows = []
    for name, setting, truth in settings_with_truth(SETTINGS):
        for arm, step_counts in ARMS.items():
            for steps in step_counts:
                for seed in SEEDS:
                    began = time.perf_counter()
                    scores = stride(setting, **{**DIGITS_STRIDE, "form": "logit", "steps": steps, "seed": seed,
                                                "full_batch": arm == "full batch"})
                    rows.append({"task": "full-batch", "setting": name, "arm": arm, "steps": steps, "seed": seed,
                                 "lds_mean": float(lds(scores, truth).mean()),
                                 "queries_without_scores": queries_without_scores(scores),
                                 "seconds": round(time.perf_counter() - began, 1)})
                    print(rows[-1], flush=True)
    write_study(RESULTS, rows, "python benchmarks/full_batch.py", started, report)


def report(rows: list[dict], stamp: dict) -> str:
    lines = [f"# Full-batch against stochastic operator training\n\nMade by `{stamp['command']}` at {stamp['commit']} "
             f"({stamp['total_seconds']:.0f} s). STRIDE-logit, the digits configuration (K = 512, d = 8); LDS against "
             f"the committed ground truth, mean over design seeds {', '.join(map(str, SEEDS))} (± their standard "
             "deviation); seconds of one whole attribution (fit, responses, recovery), median over the seeds.\n"]
    for name in SETTINGS:
        lines += [f"\n## {name}\n", "| training | steps | LDS | seconds |", "| --- | ---: | ---: | ---: |"]
        for arm, step_counts in ARMS.items():
            for steps in step_counts:
                mine = [r for r in rows if r["setting"] == name and r["arm"] == arm and r["steps"] == steps]
                values = np.array([r["lds_mean"] for r in mine])
                lines.append(f"| {arm} | {steps} | {values.mean():.3f} ± {values.std(ddof=1):.3f} | "
                             f"{np.median([r['seconds'] for r in mine]):.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
