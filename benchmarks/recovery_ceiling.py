"""How much LDS the recovery step can give back at K measurements, whatever the operators do.

STRIDE never sees an example's influence directly: it sees K sums of it, one per subset, and recovers the
n-vector from them. This benchmark plants a known dense influence — a peer's scores (EK-FAC, LoGra), which already
reach LDS 0.36–0.67 against the committed retraining ground truth — measures it exactly through a design of K subsets
(y_k = Σ_{i∈S_k} s_i: perfectly additive responses, no noise), recovers it with the engine's own solver, and reports
the recovered scores' LDS against the same ground truth. That is the ceiling of the design and the solver: perfect
operators could not do better at that K. It says whether a setting is limited by K (the number of operators) or by
what each operator measures.

    python -m benchmarks.recovery_ceiling                       # every setting; about 15 minutes on 2 cores
    python -m benchmarks.recovery_ceiling --setting pretrain

Writes benchmarks/results/recovery_ceiling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "recovery_ceiling.json"
SETTINGS = ("digits", "cancer", "pretrain", "finetune")
REFERENCES = ("ekfac", "logra")
SUBSETS = (128, 256, 512, 1024, 2048, 4096)
SUBSETS_PER_EXAMPLE = 8
SEEDS = (0, 1)
# The benchmark's STRIDE rows: fixed λ = 0.1·λ_max (suites.DIGITS_STRIDE / LM_STRIDE); and ridge, the dense
# alternative. (λ by cross-validation came within 0.035 of the fixed rule on digits and pre-training at K = 128-512 in a
# first run, and costs 5 minutes per K on pre-training, so it is not repeated here.)
RECOVERIES = {
    "lasso 0.1": dict(solver="lasso", lambda_rule="fixed", lambda_fraction=0.1),
    "ridge": dict(solver="ridge"),
}
# The K each setting's STRIDE row uses (suites.py), marked in the report.
STRIDE_K = {"digits": 512, "cancer": 512, "pretrain": 256, "finetune": 256}


def recovered(reference: np.ndarray, num_subsets: int, seed: int, settings) -> np.ndarray:
    """The reference scores (queries × n) measured through a seeded design of `num_subsets` subsets, then recovered."""
    from stride_engine.design import random_membership
    from stride_engine.recovery import recover

    membership = random_membership(reference.shape[1], num_subsets, SUBSETS_PER_EXAMPLE, seed)
    responses = np.asarray(membership.matrix @ reference.T).T  # (Q, K): each subset's summed influence
    scores = np.zeros_like(reference)
    for rows, values, _ in recover(membership.matrix, responses, settings):
        scores[rows] = values
    return scores


def run_setting(name: str, subsets: tuple[int, ...]) -> list[dict]:
    from stride_engine.recovery import RecoverySettings

    from .metrics import lds
    from .runner import _ground_truth, commit, in_fresh_process, machine
    from .settings import build_setting
    from .suites import FULL

    plan = next(p for p in FULL.settings if p.setting == name)
    setting = build_setting(name, plan.scale)
    truth = _ground_truth(FULL, plan, setting, RESULTS.parent)
    rows = []
    for label in REFERENCES:
        method = next(m for m in plan.methods if m.label == label)
        outcome = in_fresh_process(_reference_child, name, plan.scale, method)
        if outcome["status"] != "ok":
            raise RuntimeError(f"{label} failed on {name}: {outcome['error']}")
        reference = np.load(outcome["scores"])
        Path(outcome["scores"]).unlink()
        base = dict(setting=name, reference=label, n=int(reference.shape[1]), queries=int(reference.shape[0]),
                    commit=commit(), machine=machine())
        rows.append({**base, "subsets": None, "recovery": "none (the reference itself)",
                     "lds_mean": float(lds(reference, truth).mean())})
        print(f"[ceiling] {name} / {label}: LDS {rows[-1]['lds_mean']:.3f}", flush=True)
        for recovery, options in RECOVERIES.items():
            settings = RecoverySettings(**options)
            for k in subsets:
                if k * 8 > base["n"] * SUBSETS_PER_EXAMPLE:  # under 8 examples per subset: empty subsets likely
                    continue
                start = time.perf_counter()
                per_seed = [lds(recovered(reference, k, seed, settings), truth) for seed in SEEDS]
                means = [float(v.mean()) for v in per_seed]
                rows.append({**base, "subsets": k, "subsets_per_example": SUBSETS_PER_EXAMPLE, "recovery": recovery,
                             "seeds": list(SEEDS), "lds_per_seed": means, "lds_mean": float(np.mean(means)),
                             "seconds": round(time.perf_counter() - start, 1)})
                print(f"[ceiling] {name} / {label} / {recovery} / K={k}: LDS {np.mean(means):.3f}", flush=True)
    return rows


def _reference_child(name: str, scale: str, method, result_path: str) -> None:
    """The peer's dense scores, computed in a fresh process as the benchmark's own row computes them."""
    from .settings import build_setting

    torch.set_num_threads(2)
    setting = build_setting(name, scale)
    scores = np.asarray(method.resolve()(setting, **method.options), dtype=np.float64)
    np.save(result_path + ".npy", scores)
    Path(result_path).write_text(json.dumps({"status": "ok", "scores": result_path + ".npy"}))


def report(rows: list[dict], command: str) -> str:
    lines = [
        "# Recovery ceiling: the LDS a perfect measurement of K subsets gives back",
        "",
        f"Made by `{command}` at commit {rows[0]['commit']} ({rows[0]['machine']['cpus']} CPUs).",
        "",
        "A peer's dense scores are planted as the influence, measured exactly through a random design of K subsets "
        f"(d = {SUBSETS_PER_EXAMPLE} per example, the engine's `random_membership`; responses are each subset's sum, "
        "no noise) and recovered with the engine's solver (`stride_engine.recovery.recover`). LDS is against the "
        "committed retraining ground truth, as in `full.md`; the mean of design seeds "
        f"{', '.join(map(str, SEEDS))}. **bold**: the K the setting's STRIDE row uses.",
        "",
    ]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        ks = sorted({r["subsets"] for r in mine if r["subsets"]})
        lines += [f"## {setting} (n = {mine[0]['n']}, {mine[0]['queries']} queries)", "",
                  "| reference | recovery | itself | " + " | ".join(
                      f"**K = {k}**" if k == STRIDE_K.get(setting) else f"K = {k}" for k in ks) + " |",
                  "|---|---|---|" + "---|" * len(ks)]
        for reference in dict.fromkeys(r["reference"] for r in mine):
            itself = next(r["lds_mean"] for r in mine if r["reference"] == reference and r["subsets"] is None)
            for recovery in RECOVERIES:
                cells = {r["subsets"]: r["lds_mean"] for r in mine
                         if r["reference"] == reference and r["recovery"] == recovery and r["subsets"]}
                lines.append(f"| {reference} | {recovery} | {itself:.3f} | "
                             + " | ".join(f"{cells[k]:.3f}" if k in cells else "" for k in ks) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    from stride_engine.artifacts import atomic_write_text

    from curate.studies.notes import keep_notes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", action="append", choices=SETTINGS)
    parser.add_argument("--subsets", type=int, action="append", help=f"K values (default {SUBSETS})")
    args = parser.parse_args()
    command = "python -m benchmarks.recovery_ceiling" + "".join(f" --setting {s}" for s in args.setting or []) + "".join(
        f" --subsets {k}" for k in args.subsets or [])
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    for name in args.setting or SETTINGS:
        fresh = run_setting(name, tuple(args.subsets or SUBSETS))
        rows = [r for r in rows if r["setting"] != name] + fresh
        atomic_write_text(RESULTS, json.dumps(rows, indent=1) + "\n")
    markdown = RESULTS.with_suffix(".md")
    text = report(rows, command)
    atomic_write_text(markdown, keep_notes(markdown, text, rows[0]["commit"]))


if __name__ == "__main__":
    main()
