"""The `curate` command line: attribution runs, their results, and the embedded demo.

Every command that builds a run saves its resolved configuration (`RUN/config.yaml`) and its inputs
(`RUN/inputs.json`), so `curate attribute ... --config RUN/config.yaml` repeats it.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import click
import yaml

from stride_engine import (
    PRESETS, ScoreStore, Stride, StrideConfig, StrideError, preset, read_documents, read_queries,
)

from .budget import ALLOCATIONS
from .errors import CurateError
from .proxy_cli import eval_command, retrain
from .runs import AGGREGATION_RULES, RunInputs


def _offline() -> None:
    # Nothing here downloads: models and tokenizers come from local folders.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _parse_overrides(pairs: tuple[str, ...]) -> dict:
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def resolve_config(preset_name: str, config_path: Path | None, overrides: dict) -> StrideConfig:
    base = StrideConfig.load(config_path) if config_path else preset(preset_name)
    return base.replace(**overrides)


def _config_from_options(preset_name, config_path, overrides, text_field, id_field) -> StrideConfig:
    values = _parse_overrides(overrides)
    if text_field:
        values["text_field"] = text_field
    if id_field:
        values["id_field"] = id_field
    return resolve_config(preset_name, config_path, values)


@click.group()
def main() -> None:
    """curate: which training documents shaped a model's behaviour (STRIDE attribution), and acting on it."""
    _offline()


def _run_options(command):
    """The options of every command that builds a run: model, training files, run directory, configuration."""
    options = [
        click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Local Hugging Face causal LM folder."),
        click.option("--train", "train_files", required=True, multiple=True, type=click.Path(path_type=Path), help="JSONL or Parquet training file (repeatable)."),
        click.option("--out", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory (created; rerunning resumes)."),
        click.option("--preset", "preset_name", default="default", show_default=True, type=click.Choice(sorted(PRESETS))),
        click.option("--config", "config_path", type=click.Path(path_type=Path), help="A saved config.yaml (e.g. RUN/config.yaml); replaces --preset."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one configuration value (repeatable)."),
        click.option("--text-field", default=None, help="Field holding the document text (default: text)."),
        click.option("--id-field", default=None, help="Field holding the document id (default: id; line number if absent)."),
        click.option("--force", is_flag=True, help="Rebuild stages whose configuration changed instead of refusing."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@_run_options
@click.option("--queries", "queries_file", required=True, type=click.Path(path_type=Path), help="JSONL/Parquet queries: prompt+completion, or text.")
@click.option("--layers-path", default=None, help="Dotted path to the decoder-block ModuleList for unknown architectures.")
@click.option("--name", default="queries", show_default=True, help="Name of this query set inside the run.")
def attribute(model_dir, train_files, queries_file, run_dir, preset_name, config_path, overrides, text_field, id_field, layers_path, name, force, quiet):
    """Attribute every query to the training documents that moved its loss."""
    try:
        config = _config_from_options(preset_name, config_path, overrides, text_field, id_field)
        documents = read_documents(train_files, config.text_field, config.id_field, config.domain_field)
        queries = read_queries(queries_file)
        stride = Stride.from_pretrained(model_dir, config, run_dir, layers_path=layers_path, progress=not quiet)
        cut = "the output features" if config.form == "logit" else f"after block {stride.layer} of {stride.adapter.num_layers}"
        click.echo(f"{len(documents)} documents, {len(queries)} queries; {config.form} form, steering {cut}")
        stride.fit(documents, force=force)
        store = stride.attribute(queries, name=name, force=force)
        RunInputs(Path(model_dir), [Path(p) for p in train_files]).save(Path(run_dir), queries=str(queries_file), name=name)
    except StrideError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"scores: {store.folder}")
    click.echo(f"show one query: curate top {run_dir} --query {queries.ids[0]} -k 10")


@main.command()
@_run_options
def fit(model_dir, train_files, run_dir, preset_name, config_path, overrides, text_field, id_field, force, quiet):
    """Train the steering operators on a training pool, once; then attribute any target to it (select, top)."""
    try:
        config = _config_from_options(preset_name, config_path, overrides, text_field, id_field)
        documents = read_documents(train_files, config.text_field, config.id_field, config.domain_field)
        stride = Stride.from_pretrained(model_dir, config, run_dir, progress=not quiet)
        click.echo(f"{len(documents)} documents; {config.form} form, K={config.num_subsets}, {config.steps} steps")
        stride.fit(documents, force=force)
        RunInputs(Path(model_dir), [Path(p) for p in train_files]).save(Path(run_dir))
    except StrideError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"run: {run_dir}")
    click.echo(f"select for a target: curate select --run {run_dir} --target TARGET.jsonl --budget 20% --out OUT")


@main.command("select")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="A fitted run (curate fit).")
@click.option("--target", required=True, help="JSONL/Parquet of target examples, or an lm-eval task name or YAML.")
@click.option("--budget", required=True, help="'20%' of the documents, a document count ('500'), or tokens ('50M-tokens').")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder (selected/, excluded/, manifest.json).")
@click.option("--method", default="stride", show_default=True, type=click.Choice(["stride", "random", "bm25", "embedding", "dsir"]), help="stride (the run's attribution) or a model-free baseline.")
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
@click.option("--executor", default="local", show_default=True, type=click.Choice(["local", "slurm", "ray"]))
@click.option("--tasks", default=1, show_default=True, type=click.IntRange(min=1), help="datatrove tasks for the per-document stages.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--executor-option", "executor_options", multiple=True, metavar="KEY=VALUE", help="Passed to the executor (e.g. partition=cpu for Slurm).")
@click.option("--resume", is_flag=True, help="Finish an interrupted selection in OUT (same settings).")
@click.option("--overwrite", is_flag=True, help="Replace the selection in OUT.")
def select_command(run_dir, target, budget, out_dir, method, seed, rule, k, domain_floor, allocation, part_field, output_format, task_dirs, target_limit, executor, tasks, workers, executor_options, resume, overwrite):
    """Keep the training documents that help a target most, under a budget."""
    from .select import SelectionRequest, run_selection

    request = SelectionRequest(
        run=str(run_dir), target=str(target), budget=budget, out=str(out_dir), method=method, seed=seed, rule=rule, k=k, domain_floor=domain_floor,
        allocation=allocation, part_field=part_field, output_format=output_format, task_dirs=tuple(str(d) for d in task_dirs), target_limit=target_limit,
        executor=executor, tasks=tasks, workers=workers, executor_options=_parse_overrides(executor_options),
    )
    try:
        manifest = run_selection(request, resume=resume, overwrite=overwrite)
    except (CurateError, StrideError) as err:
        raise click.ClickException(str(err)) from err
    if not manifest:
        click.echo(f"submitted; the manifest appears in {out_dir} when the last stage finishes")
        return
    kept, pool = manifest["selected"], manifest["pool"]
    click.echo(f"kept {kept['documents']} of {pool['documents']} documents ({kept['tokens']} of {pool['tokens']} tokens)")
    for row in manifest["per_domain"]:
        click.echo(f"  {str(row['domain']):<14} {row['selected_documents']:>6} / {row['pool_documents']:<6} mean score {row['mean_score']:+.4g}")
    click.echo(f"selected: {Path(out_dir) / 'selected'}   manifest: {Path(out_dir) / 'manifest.json'}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--query", "query_id", required=True, help="Query id.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--name", default="queries", show_default=True, help="Query set name inside the run.")
@click.option("--least", is_flag=True, help="Show the least influential (most negative) documents instead.")
def top(run_dir, query_id, k, name, least):
    """Show the most (or least) influential training documents for one query."""
    try:
        store = ScoreStore(Path(run_dir) / "scores" / name)
        table = store.top(query_id, k=k, direction="negative" if least else "positive")
    except StrideError as err:
        raise click.ClickException(str(err)) from err
    texts = _document_texts(Path(run_dir), set(table["doc_id"]))
    heading = "least" if least else "most"
    click.echo(f"{heading} influential documents for query {query_id!r} ({len(table)} shown):")
    for row in table.iter_rows(named=True):
        snippet = textwrap.shorten(texts.get(row["doc_id"], ""), 90)
        click.echo(f"{row['rank']:>4}  {row['score']:+.5f}  {row['doc_id']:<20} {row['domain'] or '':<12} {snippet}")
    if len(table) == 0:
        click.echo("  (no document has a non-zero score in this direction)")


def _document_texts(run_dir: Path, doc_ids: set[str]) -> dict[str, str]:
    """Texts of the shown documents, when the run's training files are still where they were."""
    inputs = run_dir / "inputs.json"
    if not inputs.is_file() or not doc_ids:
        return {}
    config = StrideConfig.load(run_dir / "config.yaml")
    try:
        documents = read_documents(json.loads(inputs.read_text())["train"], config.text_field, config.id_field, config.domain_field)
    except StrideError:
        return {}
    return {i: t for i, t in zip(documents.ids, documents.texts) if i in doc_ids}


@main.command()
@click.option("--out", "out_dir", default=Path("runs/demo"), show_default=True, type=click.Path(path_type=Path))
@click.option("--preset", "preset_name", default="cpu-smoke", show_default=True, type=click.Choice(sorted(PRESETS)))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one configuration value.")
@click.option("--show", default=4, show_default=True, help="How many queries to print.")
@click.option("--quick", is_flag=True, help="A smaller corpus (about 600 documents, 48 facts) and model: about a minute.")
@click.option("--quiet", is_flag=True)
def demo(out_dir, preset_name, overrides, show, quick, quiet):
    """Generate the embedded corpus, train the demo model, attribute the planted-fact queries, print the results."""
    from .demo.run import run_demo

    try:
        run_demo(out_dir, preset(preset_name, **_parse_overrides(overrides)), show=show, quick=quick, progress=not quiet)
    except StrideError as err:
        raise click.ClickException(str(err)) from err


@main.command("recipe")
@click.argument("recipe_file", type=click.Path(path_type=Path))
@click.option("--smoke", is_flag=True, help="Apply the recipe's `smoke:` overrides (a few minutes).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Proxies trained in parallel (default: the recipe's).")
@click.option("--results", type=click.Path(path_type=Path), default=None, help="Where the result rows go (default: the recipe's).")
def recipe_command(recipe_file, smoke, workers, results):
    """Run a whole selection study from a recipe: data, reference model, STRIDE run, selections, proxies, lm-eval."""
    from .recipe import run_recipe

    try:
        path = run_recipe(recipe_file, smoke=smoke, workers=workers, results=results)
    except (CurateError, StrideError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"results: {path}  table: {path.with_suffix('.md')}  plot: {path.with_suffix('.png')}")


main.add_command(retrain)
main.add_command(eval_command)


if __name__ == "__main__":
    sys.exit(main())
