"""`curate select`: keep the training documents that help a target most, under a budget (curate.select)."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.baselines import METHODS
from ..core.budget import ALLOCATIONS
from ..core.executors import EXECUTORS
from ..core.run import AGGREGATION_RULES
from .common import USER_ERRORS, fail, parse_overrides, quiet_progress, saved_config_option


def _saved_request(values: dict) -> dict:
    """OUT/.work/request.json, as `curate select` saved it, in the command's parameter names."""
    names = {"run": "run_dir", "output_format": "output_format", "task_dirs": "task_dirs"}
    return {names.get(key, key): value for key, value in values.items()}


@click.command("select")
@saved_config_option("selection request (OUT/.work/request.json)", _saved_request)
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="A fitted run (curate fit --preset select).")
@click.option("--target", required=True, help="JSONL/Parquet of target examples, or an lm-eval task name or YAML.")
@click.option("--budget", required=True, help="'20%' of the documents, a document count ('500'), or tokens ('50M-tokens').")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder (selected/, excluded/, manifest.json).")
@click.option("--method", default="stride", show_default=True, type=click.Choice(["stride", *METHODS]), help="stride (the run's attribution) or a model-free baseline.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random and dsir baselines.")
@click.option("--rule", default="mean", show_default=True, type=click.Choice(AGGREGATION_RULES), help="How per-query scores aggregate per document.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Top k per query, for --rule topk-hits.")
@click.option("--domain-floor", default=0.0, show_default=True, type=float, help="Each domain keeps at least this share of the budget.")
@click.option("--allocation", default="greedy", show_default=True, type=click.Choice(ALLOCATIONS),
              help="greedy: the top scores; proportional: across the run's recovery groups, a share per group in proportion to its total influence; balanced: an equal share for each part of the target (its items' `part` field, a task group's tasks), each part's own best documents first (for targets that mix sources).")
@click.option("--part-field", default="part", show_default=True, help="The target items' field that names their part, for --allocation balanced (e.g. subject).")
@click.option("--format", "output_format", default="jsonl", show_default=True, type=click.Choice(["jsonl", "parquet"]))
@click.option("--task-dir", "task_dirs", multiple=True, type=click.Path(path_type=Path), help="Extra folder of lm-eval task YAMLs (for a task target).")
@click.option("--target-limit", type=click.IntRange(min=1), default=None, help="Use only the first N target items.")
@click.option("--executor", default="local", show_default=True, type=click.Choice(EXECUTORS))
@click.option("--executor-tasks", "--tasks", "tasks", default=1, show_default=True, type=click.IntRange(min=1), help="datatrove tasks of the per-document stages.")
@click.option("--executor-workers", "--workers", "workers", default=1, show_default=True, type=click.IntRange(min=1), help="datatrove tasks run at once.")
@click.option("--executor-option", "executor_options", multiple=True, metavar="KEY=VALUE", help="Passed to the executor (e.g. partition=cpu for Slurm).")
@click.option("--overwrite", is_flag=True, help="Replace a selection in OUT that was made with other settings.")
@click.option("--resume", is_flag=True, hidden=True, help="Kept for older scripts: a rerun with the same settings resumes anyway.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def select_command(run_dir, target, budget, out_dir, method, seed, rule, k, domain_floor, allocation, part_field, output_format,
                   task_dirs, target_limit, executor, tasks, workers, executor_options, overwrite, resume, quiet, config_path):
    """Keep the training documents that help a target most, under a budget (a rerun with the same settings resumes)."""
    from ..select import SelectionRequest, run_selection

    quiet_progress(quiet)
    request = SelectionRequest(
        run=str(run_dir), target=str(target), budget=str(budget), out=str(out_dir), method=method, seed=seed, rule=rule, k=k,
        domain_floor=domain_floor, allocation=allocation, part_field=part_field, output_format=output_format,
        task_dirs=tuple(str(d) for d in task_dirs), target_limit=target_limit, executor=executor, tasks=tasks, workers=workers,
        executor_options=parse_overrides(executor_options, "--executor-option"),
    )
    try:
        manifest = run_selection(request, overwrite=overwrite)
    except USER_ERRORS as err:
        raise fail(err) from err
    if not manifest:
        click.echo(f"submitted; the manifest appears in {out_dir} when the last stage finishes")
        return
    kept, pool = manifest["selected"], manifest["pool"]
    click.echo(f"kept {kept['documents']} of {pool['documents']} documents ({kept['tokens']} of {pool['tokens']} tokens)")
    for row in manifest["per_domain"]:
        click.echo(f"  {str(row['domain']):<14} {row['selected_documents']:>6} / {row['pool_documents']:<6} mean score {row['mean_score']:+.4g}")
    click.echo(f"selected: {Path(out_dir) / 'selected'}   manifest: {Path(out_dir) / 'manifest.json'}")
