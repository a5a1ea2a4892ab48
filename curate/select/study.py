"""The selection application of the study runner (`curate recipe` with `application: selection`).

Its jobs: for each target x budget x method (x seed for the seeded methods) a `curate select` output, and a proxy
trained on its selected documents for each proxy seed; plus the whole pool at the same steps (what the budget
costs). Its rows: one per target x budget x method x proxy seed, with the selection's counts and the proxy's target
and per-domain perplexities. Its report: a Markdown table (mean ± std over seeds, change against random) and a plot.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from stride_engine.artifacts import remove_path

from ..core.run import Run
from ..core.targets import target_for_run
from ..studies.proxies import proxy_job
from ..studies.recipe import task_name
from ..studies.study import Study
from .job import run_selection
from .request import SelectionRequest
from .study_report import write_report

log = logging.getLogger(__name__)

SEEDED_METHODS = ("random", "dsir")  # their selection changes with the seed; the others' does not
# STRIDE's selections: (budget allocation, aggregation rule; None = the recipe's `selection.rule`). Allocation
# (curate.core.budget): greedy top scores, shares across recovery groups, or equal shares for the target's parts.
# Rule (curate.core.run.document_influence).
STRIDE_METHODS = {
    "stride": ("greedy", None),
    "stride-proportional": ("proportional", None),
    "stride-standardized": ("greedy", "standardized"),
    "stride-balanced": ("balanced", None),  # an equal share of the budget for each part of the target
}
# A baseline under balanced allocation: each part of the target scored on its own, the same control STRIDE has.
BALANCED_BASELINES = {"bm25-balanced": "bm25"}


class SelectionStudy:
    task = "selection"
    sections = ("selection",)

    def plan(self, study: Study) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        jobs: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        # Two methods that select the same documents (balanced allocation on a target of one part is greedy) share
        # their proxies: the same data gives the same proxy, and training it twice would only spend time.
        same_selection: dict[tuple, Path] = {}
        queued: set[str] = set()  # a job is queued once (random selections and the whole pool serve every target)

        def queue(key: str, data: Path, seed: int) -> None:
            if key not in queued:
                queued.add(key)
                jobs.append(proxy_job(key, data, study.out, study.base, study.recipe, seed, study.tasks, study.task_dir))

        run = Run(study.run)
        for target, target_file in study.files["targets"].items():
            seeds = study.proxy_seeds(target)
            target_name = target_for_run(run, target_file, []).name  # names the target's queries and recovery settings
            for budget in study.recipe["selection"]["budgets"]:
                for method in study.recipe["selection"]["methods"]:
                    for seed in seeds if method in SEEDED_METHODS else [None]:
                        folder, manifest, seconds = self._selection(study, target, target_file, target_name, budget, method, seed)
                        chosen = (target, budget, seed, tuple(sorted(d["id"] for d in manifest["selected_documents"])))
                        trained = same_selection.setdefault(chosen, folder)
                        for proxy_seed in seeds if seed is None else [seed]:
                            key = f"{trained.relative_to(study.out)}/proxy-seed{proxy_seed}"
                            if trained == folder:
                                queue(key, folder / "selected", proxy_seed)
                            rows.append({
                                "target": target, "budget": budget, "method": method, "seed": proxy_seed, "job": key,
                                "selection_seconds": seconds, "selected_documents": manifest["selected"]["documents"],
                                "selected_tokens": manifest["selected"]["tokens"],
                                "selected_per_domain": {str(r["domain"]): r["selected_documents"] for r in manifest["per_domain"]},
                            })
            for proxy_seed in seeds:  # the whole pool, same steps: what the budget costs
                key = f"full-pool/proxy-seed{proxy_seed}"
                queue(key, Path(study.files["pool"]), proxy_seed)
                rows.append({"target": target, "budget": "100%", "method": "full-pool", "seed": proxy_seed, "job": key})
        return jobs, rows

    def _selection(self, study: Study, target: str, target_file: str, target_name: str, budget: str, method: str,
                   seed: int | None) -> tuple[Path, dict[str, Any], float]:
        """The selection's folder and manifest (made now, or reused when made for the same queries) and its time."""
        label = method if seed is None else f"{method}-seed{seed}"
        if method in STRIDE_METHODS:
            label = f"{method}-{study.stride_key}"
        folder = study.out / "selections" / target / budget.replace("%", "pct") / label
        if method == "random":  # a random selection does not depend on the target: share it
            folder = study.out / "selections" / "_random" / budget.replace("%", "pct") / label
        else:  # a selection made for other queries is stale, and so is what came of it
            _drop_if_stale(folder, target_name, study.out)
        allocation, rule = STRIDE_METHODS.get(method, ("balanced" if method in BALANCED_BASELINES else "greedy", None))
        started = time.perf_counter()
        if not (folder / "manifest.json").is_file():
            run_selection(SelectionRequest(
                run=str(study.run), target=target_file, budget=budget, out=str(folder),
                method="stride" if method in STRIDE_METHODS else BALANCED_BASELINES.get(method, method),
                allocation=allocation, seed=seed or 0, rule=rule or study.recipe["selection"].get("rule", "mean"),
            ), overwrite=folder.exists())
        manifest = json.loads((folder / "manifest.json").read_text())
        return folder, manifest, round(time.perf_counter() - started, 2)

    def metrics(self, study: Study, row: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
        values, target = measured["values"], task_name("target", row["target"])
        return {
            "target_ppl": values[f"{target}|word_perplexity"],
            "target_bits_per_byte": values[f"{target}|bits_per_byte"],
            "domain_ppl": {d: values[f"{task_name('domain', d)}|word_perplexity"] for d in study.files["heldout"]},
            "proxy_seconds": measured["proxy_seconds"],
        }

    def report(self, rows: list[dict[str, Any]], recipe: dict[str, Any], path: Path) -> None:
        write_report(rows, recipe, path)


def _drop_if_stale(folder: Path, target_name: str, out: Path) -> None:
    """Remove a finished selection made for another version of the target (or other recovery settings), with its
    proxies and evaluations, so that the study recomputes them instead of reporting stale numbers."""
    manifest = folder / "manifest.json"
    made_for = json.loads(manifest.read_text())["request"].get("target_run_name") if manifest.is_file() else target_name
    if made_for == target_name:
        return
    relative = folder.relative_to(out)
    log.warning("%s was made for %s, the target is now %s: redoing it", relative, made_for, target_name)
    for path in (folder, out / "proxies" / relative, out / "eval" / relative):
        remove_path(path)
