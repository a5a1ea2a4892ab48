"""`curate retrain` and `curate eval`: train a proxy model on a dataset, compare models with lm-eval (curate.proxy).

Each saves its settings into its output folder (`retrain.yaml`, `eval.yaml`), next to what it made; `--config` reads
them back. A rerun with the same settings into a finished folder reuses it; with other settings it is refused, naming
what changed, unless `--overwrite` (the folder is replaced once the new one is complete).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
import yaml

from stride_engine.artifacts import atomic_write_text

from ..core.run import RunInputs
from ..errors import CurateError
from ..proxy.evaluate import evaluate_models, target_task
from ..proxy.retrain import DEFAULT_LEARNING_RATE, DEFAULT_STEPS, train_proxy
from ..core.outputs import changed_settings
from .common import DEVICES, fail, quiet_progress, saved_config_option

__all__ = ["eval_command", "retrain"]


def _existing(path: Path, anchor: Path) -> Path:
    """`path` as recorded, or relative to `anchor` (the file that recorded it) when only that exists."""
    if path.is_absolute() or path.exists() or not (anchor / path).exists():
        return path
    return anchor / path


def base_from_manifest(data: Path) -> Path:
    """The model a selection was attributed with: DATA/manifest.json names its run (`run`, or `request.run` as
    `curate select` writes it), whose inputs.json names the model. CurateError when that chain is not there (then
    --base is needed)."""
    manifest = Path(data) / "manifest.json"
    if not manifest.is_file():
        raise CurateError(f"--base is required: {data} has no manifest.json naming the run the selection came from")
    values = json.loads(manifest.read_text())
    run = values.get("run") or (values.get("request") or {}).get("run")  # `curate select` keeps it in its request
    if not isinstance(run, str) or not run:
        raise CurateError(f"--base is required: {manifest} names no run ('run' or 'request.run')")
    run_dir = _existing(Path(run), manifest.parent)
    try:
        inputs = RunInputs.load(run_dir)
    except CurateError as err:
        raise CurateError(f"--base is required: the selection's run cannot be read ({err})") from err
    return _existing(inputs.model, run_dir)


def _save_config(path: Path, config: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


def _already_made(out: Path, saved_name: str, settings: dict, overwrite: bool) -> bool:
    """True when `out` holds a finished output of these very settings (then nothing is redone); refuses one of
    other settings unless `overwrite`."""
    saved = out / saved_name
    if overwrite or not saved.is_file():
        return False  # a folder without saved settings is refused (or replaced) by the job itself
    changed = changed_settings(yaml.safe_load(saved.read_text()) or {}, settings)
    if changed:
        raise CurateError(
            f"{out} was made with other settings (changed: {', '.join(changed)}; see {saved}); "
            "pass --overwrite to replace it, or choose another folder"
        )
    return True


def _saved_retrain(values: dict) -> dict:
    return {key: value for key, value in values.items() if key != "device" or value in DEVICES}


@click.command()
@saved_config_option("proxy's retrain.yaml (PROXY/retrain.yaml)", _saved_retrain)
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset folder (e.g. a selection; *.jsonl, *.jsonl.gz, *.parquet inside, recursively) or one file.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the trained proxy model.")
@click.option("--base", type=click.Path(path_type=Path), help="Local Hugging Face model whose architecture and tokenizer the proxy copies (default: the model of the run named in DATA/manifest.json).")
@click.option("--steps", default=DEFAULT_STEPS, show_default=True, type=click.IntRange(min=1), help="Optimiser steps (fixed, whatever the dataset size).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the initial weights and the data order.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Rows per step.")
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(min=2), help="Tokens per packed row.")
@click.option("--learning-rate", default=DEFAULT_LEARNING_RATE, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Peak learning rate.")
@click.option("--text-field", default="text", show_default=True, help="Field holding the document text.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(DEVICES), help="Where the proxy trains (auto: a GPU when there is one).")
@click.option("--overwrite", is_flag=True, help="Replace an --out folder made with other settings (once the new model is complete).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch (default: torch's choice; 1 is fastest on small shared machines).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def retrain(data, out, base, steps, seed, batch_size, seq_len, learning_rate, text_field, device, overwrite, threads, quiet, config_path):
    """Train a fresh proxy model (the base model's architecture and tokenizer, new weights) on a dataset."""
    quiet_progress(quiet)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        base = base if base is not None else base_from_manifest(data)
        settings = {
            "data": str(data), "out": str(out), "base": str(base), "steps": steps, "seed": seed, "batch_size": batch_size,
            "seq_len": seq_len, "learning_rate": learning_rate, "text_field": text_field, "device": device,
        }
        if _already_made(Path(out), "retrain.yaml", settings, overwrite):
            click.echo(f"proxy model: {out} (already trained with these settings; pass --overwrite to train it again)")
            return
        train_proxy(
            data, out, base, steps=steps, seed=seed, batch_size=batch_size, seq_len=seq_len, learning_rate=learning_rate,
            text_field=text_field, progress=not quiet, overwrite=overwrite, device=device,
        )
    except CurateError as err:
        raise fail(err) from err
    _save_config(out / "retrain.yaml", settings)
    record = json.loads((out / "training.json").read_text())
    click.echo(
        f"proxy model: {out} ({record['documents']} documents, {record['tokens']} tokens, {steps} steps; "
        f"train loss {record['first_train_loss']:.3f} -> {record['final_train_loss']:.3f})"
    )


def _parse_models(specs: tuple[str, ...]) -> dict[str, Path]:
    """`NAME=PATH` or `PATH` (named after its folder) per --model, in order; the first is the reference."""
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or "/" in name or not name:
            name, path = Path(spec).name, spec
        if name in models:
            raise click.BadParameter(f"two models named {name!r}; name them with NAME=PATH", param_hint="--model")
        models[name] = Path(path)
    return models


def _saved_eval(values: dict) -> dict:
    """REPORT/eval.yaml in the command's parameter names."""
    options = dict(values)
    if isinstance(options.get("models"), dict):
        options["model_specs"] = [f"{name}={path}" for name, path in options.pop("models").items()]
    if isinstance(options.get("tasks"), list):
        options["tasks"] = ",".join(options["tasks"])
    return options


@click.command("eval")
@saved_config_option("report's eval.yaml (REPORT/eval.yaml)", _saved_eval)
@click.option("--model", "model_specs", required=True, multiple=True, metavar="[NAME=]PATH", help="Local Hugging Face model folder (repeatable; the first is the reference).")
@click.option("--tasks", default="", help="Comma-separated task names (recipes/tasks/README.md lists curate's).")
@click.option("--target", type=click.Path(path_type=Path), help="JSONL/Parquet file: adds a rolling-perplexity task named 'target' on it.")
@click.option("--target-field", default="text", show_default=True, help="Field holding the text in --target (and in --domains).")
@click.option("--domains", "domains_file", type=click.Path(path_type=Path),
              help="JSONL of held-out documents with a domain field: adds a rolling-perplexity task 'domain_<name>' per domain.")
@click.option("--domain-field", default="domain", show_default=True, help="Field naming each --domains record's domain.")
@click.option("--task-dir", "task_dirs", multiple=True, type=click.Path(path_type=Path), help="Extra lm-eval task folder or YAML (repeatable).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for results.parquet, results.json, report.md, report.png.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N documents of each task.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, type=click.Choice(DEVICES), help="Where the models run (auto: a GPU when there is one).")
@click.option("--overwrite", is_flag=True, help="Replace an --out folder made with other settings.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_command(model_specs, tasks, target, target_field, domains_file, domain_field, task_dirs, out, limit, batch_size, device, overwrite, quiet, config_path):
    """Evaluate models with lm-eval on offline tasks and write a comparison report."""
    quiet_progress(quiet)
    models = _parse_models(model_specs)
    requested = [t.strip() for t in tasks.split(",") if t.strip()]
    task_names = list(requested)
    settings = {
        "models": {name: str(path) for name, path in models.items()}, "tasks": requested, "out": str(out),
        "target": str(target) if target else None, "target_field": target_field,
        "domains": str(domains_file) if domains_file else None, "domain_field": domain_field,
        "task_dirs": [str(p) for p in task_dirs], "limit": limit, "batch_size": batch_size, "device": device,
    }
    try:
        if _already_made(Path(out), "eval.yaml", settings, overwrite):
            _show_report(out, "already evaluated with these settings; pass --overwrite to evaluate again")
            return
        with tempfile.TemporaryDirectory(prefix="curate-target-") as folder:
            extra = list(task_dirs)
            if target is not None:
                extra.append(target_task("target", target, target_field, Path(folder)))
                task_names.append("target")
            if domains_file is not None:
                for name, path in domain_files(domains_file, domain_field, Path(folder)).items():
                    extra.append(target_task(f"domain_{name}", path, target_field, Path(folder)))
                    task_names.append(f"domain_{name}")
            evaluate_models(models, task_names, out, extra, limit=limit, batch_size=batch_size, overwrite=overwrite,
                            device=device)
    except CurateError as err:
        raise fail(err) from err
    _save_config(out / "eval.yaml", settings)
    _show_report(out)


def domain_files(path: Path, field: str, folder: Path) -> dict[str, Path]:
    """--domains: the file's records split by their domain into one JSONL per domain (names made task-safe)."""
    import re

    if not Path(path).is_file():
        raise CurateError(f"--domains file {path} does not exist")
    by_domain: dict[str, list[str]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get(field) in (None, ""):
            raise CurateError(f"{path}, line {number}: no {field!r} field (each --domains record names its domain)")
        by_domain.setdefault(re.sub(r"[^A-Za-z0-9_.-]", "_", str(record[field])), []).append(line + "\n")
    if not by_domain:
        raise CurateError(f"--domains file {path} has no records")
    files = {}
    for name, lines in by_domain.items():
        files[name] = Path(folder) / f"domain-{name}.jsonl"
        files[name].write_text("".join(lines))
    return files


def _show_report(out: Path, note: str = "") -> None:
    report = (Path(out) / "report.md").read_text()
    click.echo("\n".join(line for line in report.splitlines() if line.startswith("|")))
    click.echo(f"report: {Path(out) / 'report.md'}" + (f" ({note})" if note else ""))
