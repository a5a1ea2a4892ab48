"""What the classifier studies (operator_steps.py, full_batch.py) share: a full-scale setting with its committed
ground truth, and writing a study's rows with the stamp that says how they were made."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def setting_with_truth(name: str):
    """The full-scale setting `name` and its ground truth from results/ground_truth/ (computed there when absent)."""
    from benchmarks.ground_truth import load_or_compute
    from benchmarks.settings import build_setting
    from benchmarks.suites import FULL

    setting = build_setting(name, "full")
    plan = next(p for p in FULL.settings if p.setting == name)
    truth = load_or_compute(setting, RESULTS / "ground_truth", plan.lds_subsets, plan.fraction, seed=0,
                            shared_init=plan.shared_init)
    return setting, truth


def settings_with_truth(names: tuple[str, ...]):
    """(name, setting, ground truth) for each of `names`, on this machine's 2 cores as every committed study ran."""
    import torch

    torch.set_num_threads(2)
    for name in names:
        yield (name, *setting_with_truth(name))


def write_study(path: Path, rows: list[dict], command: str, started: float, report: Callable[[list[dict], dict], str]) -> None:
    """path (.json) gets every row with the stamp; path.md the report, keeping its hand-written notes."""
    from curate.studies.notes import keep_notes
    from curate.studies.results import commit, machine

    stamp = {"commit": commit(), "machine": machine(), "command": command, "total_seconds": round(time.perf_counter() - started, 1)}
    path.write_text(json.dumps([{**row, **stamp} for row in rows], indent=1))
    path.with_suffix(".md").write_text(keep_notes(path.with_suffix(".md"), report(rows, stamp), stamp["commit"]))
    print(path.with_suffix(".md").read_text())
