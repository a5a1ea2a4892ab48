"""`Study`: what every application's jobs start from (the recipe and the shared stages, built or reused)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Study:
    """The recipe and its shared stages: data files, base and reference models, STRIDE run, evaluation tasks."""

    recipe: dict[str, Any]
    out: Path
    files: dict[str, Any]  # prepare_data's: pool, targets, eval, heldout
    base: Path
    reference: Path
    run: Path | None  # None when the application fits its own runs
    run_fit_seconds: float | None
    stride_key: str  # names what STRIDE's whole configuration (fit and recovery) made
    tasks: list[str]
    task_dir: Path
    smoke: bool

    def proxy_seeds(self, target: str) -> list[int]:
        return (self.recipe["proxy"].get("target_seeds") or {}).get(target, self.recipe["proxy"]["seeds"])
