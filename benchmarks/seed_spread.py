"""Where a converged fit's seed spread comes from on a small classifier: the design draw or the operators' start.

The converged activation-form row (`suites.CONVERGED`, `form=activation`, `layer=1`) on the cancer MLP moves from LDS
0.07 to 0.24 between seeds (benchmarks/results/full.md), as far as its gap to LoGra. `seed` sets both the membership
design and everything the operators' training draws (their initialisation, the stability rows, the recovery's folds);
`design_seed` sets the design alone. This study fixes one and varies the other:

    design 0, start 0 / 1 / 2     the spread from the operators' start alone
    design 0 / 1 / 2, start 0     the spread from the design alone

and averages the three fits of each line two ways: their scores as they are, and each fit's scores standardised per
query first (`stride_engine.fusion.standardised`), so no fit weighs more for its scale (the benchmark's `ensemble`
with and without `standardize`).

    python -m benchmarks.seed_spread                   # cancer, about 8 minutes on 2 cores
    python -m benchmarks.seed_spread --settings cancer,digits

Writes benchmarks/results/seed_spread.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "seed_spread.json"
SEEDS = (0, 1, 2)


def main() -> None:
    from benchmarks.classifier_study import settings_with_truth, write_study
    from benchmarks.methods.stride import stride
    from benchmarks.metrics import lds
    from benchmarks.suites import CONVERGED, DIGITS_STRIDE
    from stride_engine.fusion import standardised

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="cancer")
    args = parser.parse_args()
    options = {**DIGITS_STRIDE, **CONVERGED, "form": "activation", "layer": 1}
    started = time.perf_counter()
    rows = []
    for name, setting, truth in settings_with_truth(tuple(args.settings.split(","))):
        fits: dict[tuple[int, int], np.ndarray] = {}
        for design, start in [(0, s) for s in SEEDS] + [(d, 0) for d in SEEDS[1:]]:
            begun = time.perf_counter()
            fits[design, start] = stride(setting, **{**options, "seed": start, "design_seed": design})
            rows.append({"task": "seed-spread", "setting": name, "varied": "fit", "design_seed": design, "seed": start,
                         "lds": float(lds(fits[design, start], truth).mean()), "seconds": round(time.perf_counter() - begun, 1)})
            print(rows[-1], flush=True)
        for varied, keys in (("start", [(0, s) for s in SEEDS]), ("design", [(d, 0) for d in SEEDS])):
            single = [float(lds(fits[k], truth).mean()) for k in keys]
            rows.append({"task": "seed-spread", "setting": name, "varied": varied, "lds_single": single,
                         "lds_mean_of_singles": float(np.mean(single)), "lds_spread": float(np.ptp(single)),
                         "lds_averaged": float(lds(np.mean([fits[k] for k in keys], axis=0), truth).mean()),
                         "lds_averaged_standardized": float(lds(np.mean([standardised(fits[k]) for k in keys], axis=0), truth).mean())})
            print(rows[-1], flush=True)
    write_study(RESULTS, rows, "python -m benchmarks.seed_spread" + (f" --settings {args.settings}" if args.settings != "cancer" else ""),
                started, report)


def report(rows: list[dict], stamp: dict) -> str:
    lines = ["# Seed spread of the converged activation-form fit", "",
             f"Made by `{stamp['command']}` at {stamp['commit']} ({stamp['total_seconds']:.0f} s). LDS against the committed "
             "retraining ground truth, mean over queries (higher is better). Options: the benchmark's converged "
             "activation-form row (`--set full_batch=true --set steps=1000 --set measurement=log-odds --set rank=16 "
             "--set form=activation --set layer=1`); `seed` sets the operators' start (initialisation, stability rows, "
             "recovery folds), `design_seed` the membership design.", ""]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        lines += [f"## {setting}", "", "| design_seed | seed | LDS | seconds |", "| ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['design_seed']} | {r['seed']} | {r['lds']:.3f} | {r['seconds']:.0f} |"
                  for r in rows if r["setting"] == setting and r["varied"] == "fit"]
        lines += ["", "| varied (the other fixed at 0) | single fits | spread | mean of singles | scores averaged | standardized, averaged |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['varied']} | {' / '.join(f'{v:.3f}' for v in r['lds_single'])} | {r['lds_spread']:.3f} | "
                  f"{r['lds_mean_of_singles']:.3f} | {r['lds_averaged']:.3f} | {r['lds_averaged_standardized']:.3f} |"
                  for r in rows if r["setting"] == setting and r["varied"] != "fit"]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
