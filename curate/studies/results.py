"""A study's result rows: written as JSON with the context that made them, and compared against a reference arm."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from stride_engine.artifacts import atomic_write_text


def write_rows(rows: list[dict], recipe: dict, path: Path, fit_seconds: float | None, total_seconds: float,
               smoke: bool) -> list[dict]:
    """Every row with the study's context (recipe, commit, machine, command, times), written to `path`; returns them."""
    context = {
        "recipe": recipe.get("name"), "smoke": smoke, "commit": commit(), "machine": machine(),
        "command": "curate recipe " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "curate recipe",
        "stride_fit_seconds": fit_seconds, "invocation_seconds": round(total_seconds, 1),
    }
    rows = [{**row, **context} for row in rows]
    atomic_write_text(Path(path), json.dumps(rows, indent=1) + "\n")
    return rows


def against_reference(values: list[float], reference: list[float]) -> str:
    """'-57.4% (p < 0.001)': the change of the mean against the reference arm's (e.g. random selection), and Welch's
    t-test of the seeds' log values (perplexity is a ratio scale; a collapsed arm's seeds spread multiplicatively).
    Without two seeds on each side, the change alone."""
    change = f"{100 * (np.mean(values) / np.mean(reference) - 1):+.1f}%"
    if min(len(values), len(reference)) < 2:
        return change
    from scipy.stats import ttest_ind

    p = ttest_ind(np.log(values), np.log(reference), equal_var=False).pvalue
    return f"{change} (p {'< 0.001' if p < 0.001 else f'= {p:.2g}'})"


# What a study writes itself (its results, its runs) does not make the tree it ran from dirty: only code and
# configuration do. Without this, every row after a study's first was stamped -dirty by the study's own output.
OUTPUTS_EXCLUDED = (":(top,exclude)benchmarks/results", ":(top,exclude)runs")


def commit() -> str:
    """The commit the study ran from, `-dirty` when tracked files had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", *OUTPUTS_EXCLUDED], capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
