"""What an application gives the study runner: the sections of its recipe, its proxies' datasets, its metrics, its report.

An application is named in a recipe (`application: selection`) and found here by name, so the runner never imports
an application itself (applications use the runner's shared stages, not the other way round).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from ..errors import CurateError
from .study import Study

# name -> "module:class"; each class implements StudyApplication
APPLICATIONS: dict[str, str] = {
    "selection": "curate.select.study:SelectionStudy",
    "contamination": "curate.contamination.study:ContaminationStudy",
    "reweight": "curate.reweight.study:ReweightStudy",
}


class StudyApplication(Protocol):
    task: str  # every result row carries it (`task: selection`)
    sections: tuple[str, ...]  # the recipe sections it reads beyond the shared ones
    # Optional `fits_pool_run: bool` (default True): whether the runner fits STRIDE on the pool's reference model.
    # The contamination study sets it False: it trains and fits a model of its own on each injected corpus.

    def plan(self, study: Study) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Make the application's outputs (selections, mixtures, ...) and return the proxy jobs that check them
        (curate.studies.proxies.proxy_job) and one row per result, each naming its job's key in `job` (a row without
        one is complete as it is: the runner adds no proxy metrics to it)."""

    def metrics(self, study: Study, row: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
        """A row's metrics from its proxy's measured values (`values`: "task|metric" -> value; `proxy_seconds`)."""

    def report(self, rows: list[dict[str, Any]], recipe: dict[str, Any], path: Path) -> None:
        """Write the rows' Markdown table (path.with_suffix('.md')) and plot (path.with_suffix('.png'))."""


def application_for(name: str, recipe_path: Path | str | None = None) -> StudyApplication:
    if name not in APPLICATIONS:
        where = f"recipe {recipe_path}: " if recipe_path else ""
        raise CurateError(f"{where}application {name!r} is not one of {sorted(APPLICATIONS)}")
    module, _, attribute = APPLICATIONS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)()
