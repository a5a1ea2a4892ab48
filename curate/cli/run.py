"""`curate fit`, `curate attribute`, `curate top`: build an attribution run, attribute queries to it, read the result.

Every command that builds a run saves its resolved configuration (`RUN/config.yaml`) and its inputs
(`RUN/inputs.json`), so `curate attribute --config RUN/config.yaml --out RUN` repeats it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import click

from stride_engine import PRESETS, distributed, Queries, ScoreStore, Stride, StrideConfig, StrideError, preset, read_documents, read_queries
from stride_engine.artifacts import RunDirectory

from ..core.run import Run, RunInputs
from ..core.targets import LONG_TEXT, fit_to_window
from ..errors import CurateError
from ..proxy.retrain import max_positions
from .common import DEVICES, USER_ERRORS, echo, fail, parse_overrides, quiet_progress


def _run_config_option(command):
    def load(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
        if value is None:
            return None
        inputs = value.parent / "inputs.json"
        if inputs.is_file():
            saved = json.loads(inputs.read_text())
            defaults = {"model_dir": saved.get("model"), "train_files": saved.get("train"),
                        "queries_file": saved.get("queries"), "name": saved.get("name")}
            ctx.default_map = {**(ctx.default_map or {}), **{k: v for k, v in defaults.items() if v is not None}}
        return value

    return click.option(
        "--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True, callback=load,
        help="A run's saved config.yaml (RUN/config.yaml): replaces --preset; the inputs.json beside it gives the model, "
             "training files and queries when they are not given.",
    )(command)


def _run_options(command):
    """The options of every command that builds a run: model, training files, run directory, configuration."""
    options = [
        click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Local Hugging Face causal LM folder."),
        click.option("--train", "train_files", required=True, multiple=True, type=click.Path(path_type=Path), help="JSONL or Parquet training file (repeatable)."),
        click.option("--out", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory (created; a rerun resumes)."),
        click.option("--preset", "preset_name", default="default", show_default=True, type=click.Choice(sorted(PRESETS)),
                     help="Named configuration; `select` for runs meant for `curate select`."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one configuration value (repeatable)."),
        click.option("--text-field", default=None, help="Field holding the document text (default: text)."),
        click.option("--id-field", default=None, help="Field holding the document id (default: id; file:line if absent)."),
        click.option("--layers-path", default=None, help="Dotted path to the decoder-block ModuleList, for architectures curate does not know."),
        click.option("--device", default=None, type=click.Choice(DEVICES), help="Where the model runs (default: the preset's)."),
        click.option("--overwrite", "--force", "overwrite", is_flag=True,
                     help="Rebuild the stages whose configuration changed (and those after them) instead of refusing."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    command = _run_config_option(command)
    for option in reversed(options):
        command = option(command)
    return command


def resolve_config(preset_name: str, config_path: Path | None, overrides: dict) -> StrideConfig:
    base = StrideConfig.load(config_path) if config_path else preset(preset_name)
    return base.replace(**overrides)


def _config(preset_name, config_path, overrides, text_field, id_field, device) -> StrideConfig:
    values = parse_overrides(overrides)
    for key, value in (("text_field", text_field), ("id_field", id_field), ("device", device)):
        if value:
            values[key] = value
    return resolve_config(preset_name, config_path, values)


@click.command()
@_run_options
@click.option("--chunks-only", is_flag=True,
              help="Chunk the pool and stop before training STRIDE's operators: enough for `curate reweight --rule "
                   "domain-operators`, which trains its own (minutes instead of the fit); a later `curate fit` without "
                   "it trains them in the same run.")
def fit(model_dir, train_files, run_dir, preset_name, config_path, overrides, text_field, id_field, layers_path, device, overwrite, quiet,
        chunks_only):
    """Train the steering operators on a training pool, once; then attribute any target to it (select, top)."""
    quiet_progress(quiet)
    try:
        config = _config(preset_name, config_path, overrides, text_field, id_field, device)
        documents = read_documents(train_files, config.text_field, config.id_field, config.domain_field)
        stride = Stride.from_pretrained(model_dir, config, run_dir, layers_path=layers_path, progress=not quiet)
        echo(f"{len(documents)} documents; " + ("chunks only, no operators" if chunks_only else
                                                 f"{config.form} form, K={config.num_subsets}, {config.steps} steps"))
        stride.fit(documents, force=overwrite, operators=not chunks_only)
        if distributed.is_main():
            RunInputs(Path(model_dir), [Path(p) for p in train_files], operators=stride.has_operators).save(Path(run_dir))
    except USER_ERRORS as err:
        raise fail(err) from err
    echo(f"run: {run_dir}")
    if not stride.has_operators:
        echo(f"reweight from it: curate reweight --run {run_dir} --rule domain-operators --target TARGET.jsonl --out OUT")
        return
    echo(f"select for a target: curate select --run {run_dir} --target TARGET.jsonl --budget 20% --out OUT")


@click.command()
@_run_options
@click.option("--queries", "queries_file", required=True, type=click.Path(path_type=Path), help="JSONL/Parquet queries: prompt+completion, or text.")
@click.option("--name", default="queries", show_default=True, help="Name of this query set inside the run.")
@click.option("--long-queries", default="window", show_default=True, type=click.Choice(LONG_TEXT),
              help="A text query longer than the model's window: split into windows <id>#0, <id>#1, ... (window) or cut "
                   "to its opening (cut). A prompt+completion query is always cut, the prompt losing its beginning first.")
@click.option("--fuse", default=None, type=click.Choice(["none", "ekfac"]),
              help="Fuse STRIDE's scores with a gradient method's, each standardised per query (docs/method.md, "
                   "\"Fused scores\"): ekfac = EK-FAC influence from kronfluence. The best rankings the benchmark measured, "
                   "at the cost of both methods. Default: the configuration's (none). STRIDE's share: --set fuse_weight=0.5.")
def attribute(model_dir, train_files, queries_file, run_dir, preset_name, config_path, overrides, text_field, id_field,
              layers_path, device, name, long_queries, fuse, overwrite, quiet):
    """Attribute every query to the training documents that moved its loss."""
    quiet_progress(quiet)
    try:
        config = _config(preset_name, config_path, overrides, text_field, id_field, device)
        if fuse is not None:
            config = config.replace(fuse=fuse)
        documents = read_documents(train_files, config.text_field, config.id_field, config.domain_field)
        stride = Stride.from_pretrained(model_dir, config, run_dir, layers_path=layers_path, progress=not quiet)
        queries = _fitted_queries(read_queries(queries_file), stride, long_queries)
        stride.check_queries(queries)  # every query is checked before the operators train
        cut = "the output features" if config.form == "logit" else f"after block {stride.layer} of {stride.adapter.num_layers}"
        fused = "" if config.fuse == "none" else f"; fused with {config.fuse} (STRIDE's share {config.fuse_weight:g})"
        echo(f"{len(documents)} documents, {len(queries)} queries; {config.form} form, steering {cut}{fused}")
        stride.fit(documents, force=overwrite)
        store = stride.attribute(queries, name=name, force=overwrite)
        if distributed.is_main():
            RunInputs(Path(model_dir), [Path(p) for p in train_files]).save(Path(run_dir), queries=str(queries_file), name=name)
    except USER_ERRORS as err:
        raise fail(err) from err
    echo(f"scores: {store.folder}")
    echo(f"show one query: curate top --run {run_dir} --name {name} --query {queries.ids[0]} -k 10")


def _fitted_queries(queries: Queries, stride: Stride, long_queries: str) -> Queries:
    """Queries fitted to the model's window as `curate select` fits a target's items (windows or cuts), said aloud."""
    model_config = getattr(getattr(stride.adapter, "model", None), "config", None)
    window = (max_positions(model_config) if model_config is not None else None) or 1 << 30
    fitted, truncated, windowed = fit_to_window(queries, stride.tokenizer, window, long_queries)
    if truncated or windowed:
        echo(f"{windowed} queries longer than the model's {window} tokens became windows, {truncated} were cut")
    return fitted


@click.command()
@click.argument("run_argument", required=False, metavar="[RUN]", type=click.Path(path_type=Path))
@click.option("--run", "run_option", type=click.Path(path_type=Path), help="The run directory (also accepted as the first argument).")
@click.option("--query", "query_id", required=True, help="Query id (a windowed query's windows are <id>#0, <id>#1, ...).")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--name", default="queries", show_default=True, help="Query set name inside the run.")
@click.option("--least", is_flag=True, help="Show the least influential (most negative) documents instead.")
def top(run_argument, run_option, query_id, k, name, least):
    """Show the most (or least) influential training documents for one query."""
    if (run_argument is None) == (run_option is None):
        raise click.UsageError("give the run once: --run RUN (or RUN as the first argument)")
    run_dir = Path(run_option or run_argument)
    try:
        RunDirectory(run_dir).check_format()
        store = ScoreStore(run_dir / "scores" / name)
        table = store.top(query_id, k=k, direction="negative" if least else "positive")
    except StrideError as err:
        raise fail(err) from err
    texts = _document_texts(run_dir, set(table["doc_id"]))
    heading = "least" if least else "most"
    click.echo(f"{heading} influential documents for query {query_id!r} ({len(table)} shown):")
    for row in table.iter_rows(named=True):
        snippet = textwrap.shorten(texts.get(row["doc_id"], ""), 90)
        click.echo(f"{row['rank']:>4}  {row['score']:+.5f}  {row['doc_id']:<20} {row['domain'] or '':<12} {snippet}")
    if len(table) == 0:
        click.echo("  (no document has a non-zero score in this direction)")


def _document_texts(run_dir: Path, doc_ids: set[str]) -> dict[str, str]:
    """Texts of the shown documents, when the run's training files are still where they were."""
    if not doc_ids:
        return {}
    try:
        documents = Run(run_dir).documents
    except (CurateError, StrideError):
        return {}
    return {i: t for i, t in zip(documents.ids, documents.texts) if i in doc_ids}
