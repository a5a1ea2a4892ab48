"""`curate reweight`: new mixture weights for the corpus's domains from their influence on a target (curate.reweight)."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.executors import EXECUTORS
from ..errors import CurateError
from ..reweight.request import RULES, SIGNALS
from ..reweight.weights import GUARDS, MODES, PRIORS, WEIGHTINGS
from .common import USER_ERRORS, fail, parse_overrides, quiet_progress, saved_config_option

_SAVED_NAMES = {"run": "run_dir", "weights": "given"}  # request field -> this command's parameter


def given_weights(value) -> dict[str, float] | None:
    """--weights: a JSON object, a file holding one, or a reweighting's weights.json ({"domains": [{domain, weight}]})."""
    import json

    if value is None or isinstance(value, dict):
        return value
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        weights = json.loads(text)
    except json.JSONDecodeError as err:
        raise CurateError(f"--weights {value!r} is neither a JSON object nor a file holding one: {err}") from err
    if isinstance(weights, dict) and isinstance(weights.get("domains"), list):
        weights = {d["domain"]: d["weight"] for d in weights["domains"]}
    if not isinstance(weights, dict) or not all(isinstance(v, (int, float)) for v in weights.values()):
        raise CurateError(f"--weights must map each domain to a number, got {text[:80]!r}")
    return {str(k): float(v) for k, v in weights.items()}


@click.command("reweight")
@saved_config_option("reweighting request (OUT/.work/request.json)", lambda values: {_SAVED_NAMES.get(k, k): v for k, v in values.items()})
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="A fitted run over the corpus (curate fit).")
@click.option("--target", default=None, help="JSONL/Parquet of target examples, or an lm-eval task name or YAML (as for select).")
@click.option("--weights", "given", default=None, metavar="JSON|FILE",
              help="Apply this mixture instead of computing one: a JSON object domain -> weight, a file holding one, or "
                   "another reweighting's weights.json (no target then).")
@click.option("--method", default="stride", show_default=True, type=click.Choice(["stride", *SIGNALS]),
              help="The per-document signal: STRIDE's influence, or a model-free score of each document against the target.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (weights.json, weights.png, report.md, manifest.json).")
@click.option("--domain-field", default="domain", show_default=True,
              help="The corpus records' field naming their domain; 'groups': the run's recovery groups stand in for missing labels.")
@click.option("--tokens", default=None, help="The mixture's token budget ('50M', '2.5B'); default: as many tokens as the corpus has.")
@click.option("--out-data", type=click.Path(path_type=Path), default=None, help="Also write the corpus resampled to the new weights here.")
@click.option("--mode", default="target", show_default=True, type=click.Choice(MODES),
              help="target: the whole target; average: each part of the target an equal say; worst: the part served worst (DRO).")
@click.option("--eta", default=1.0, show_default=True, type=float, help="With --weighting tilt: how far influence moves the weights (per standard deviation across domains).")
@click.option("--weighting", default="proportional", show_default=True, type=click.Choice(WEIGHTINGS),
              help="proportional: each domain's share of the target's total positive influence (a log-law loss's "
                   "optimum; no eta); tilt: w ∝ prior·exp(eta·score) (needed for --mode worst); measured in docs/reweight.md.")
@click.option("--guard", default="macro", show_default=True, type=click.Choice(GUARDS),
              help="macro: move the mixture towards the domains' own optimum until their predicted mean loss is no "
                   "worse than the natural mixture's (the weights' geometric mean no lower than natural's); measured: "
                   "each domain's slope read from the domain operators' doses on held-out chunks (--rule domain-operators); "
                   "none: the rule's mixture as it is, whatever it costs the other domains.")
@click.option("--smoothing", default=0.2, show_default=True, type=float, help="Share of the prior mixed back into the weights.")
@click.option("--max-epochs", default=4.0, show_default=True, type=float, help="No domain repeated more than this many times at the budget (UniMax).")
@click.option("--prior", default="natural", show_default=True, type=click.Choice(PRIORS), help="The mixture the weights start from.")
@click.option("--rule", default=None, type=click.Choice(RULES),
              help="How influence is read per domain: domain-operators (operators trained on each whole domain; the "
                   "default for --method stride, and all a run prepared with `curate fit --chunks-only` serves), "
                   "domain-regression (the responses regressed on each subset's tokens of each domain), a per-document "
                   "aggregation of the run's scores summed over the domain's tokens (positive, the default for a "
                   "baseline's scores; topk-hits, mean, standardized), or auto: domain-regression when the run passes "
                   "the own-domain check, else positive; measured in docs/reweight.md.")
@click.option("--part-field", default="part", show_default=True, help="The target items' field naming their part (for --mode average/worst).")
@click.option("--task-dir", "task_dirs", multiple=True, type=click.Path(path_type=Path), help="Extra folder of lm-eval task YAMLs.")
@click.option("--target-limit", type=click.IntRange(min=1), default=None, help="Use only the first N target items.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the resampling.")
@click.option("--format", "output_format", default="jsonl", show_default=True, type=click.Choice(["jsonl", "parquet"]))
@click.option("--executor", default="local", show_default=True, type=click.Choice(EXECUTORS))
@click.option("--executor-tasks", "tasks", default=1, show_default=True, type=click.IntRange(min=1), help="datatrove tasks of the resampling.")
@click.option("--executor-workers", "workers", default=1, show_default=True, type=click.IntRange(min=1), help="datatrove tasks run at once.")
@click.option("--executor-option", "executor_options", multiple=True, metavar="KEY=VALUE", help="Passed to the executor (e.g. partition=cpu for Slurm).")
@click.option("--overwrite", is_flag=True, help="Replace a reweighting in OUT (and its dataset) made with other settings.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def reweight_command(run_dir, target, given, method, out, domain_field, tokens, out_data, mode, eta, weighting, guard, smoothing, max_epochs, prior, rule, part_field,
                     task_dirs, target_limit, seed, output_format, executor, tasks, workers, executor_options, overwrite, quiet, config_path):
    """New mixture weights for the corpus's domains from their influence on a target, beside the natural and uniform
    mixtures, and optionally the corpus resampled to them at a token budget."""
    from ..reweight import ReweightRequest, run_reweight
    from ..reweight.report import unhelped_note

    quiet_progress(quiet)
    try:
        given = given_weights(given)
    except CurateError as err:
        raise fail(err) from err
    request = ReweightRequest(
        run=str(run_dir), target=str(target) if target else None, out=str(out), method=method, weights=given, domain_field=domain_field, tokens=tokens,
        out_data=str(out_data) if out_data else None, mode=mode, eta=eta, weighting=weighting, guard=guard, smoothing=smoothing, max_epochs=max_epochs, prior=prior,
        rule=rule, part_field=part_field, task_dirs=tuple(map(str, task_dirs)), target_limit=target_limit, seed=seed,
        output_format=output_format, executor=executor, tasks=tasks, workers=workers,
        executor_options=parse_overrides(executor_options, "--executor-option"),
    )
    try:
        manifest = run_reweight(request, overwrite=overwrite)
    except USER_ERRORS as err:
        raise fail(err) from err
    if not manifest:
        click.echo(f"submitted; the manifest appears in {out} when the last stage finishes")
        return
    record = manifest["weights"]
    click.echo(f"{'domain':<16} {'natural':>8} {'uniform':>8} {'weight':>8} {'epochs':>7}")
    for d in record["domains"]:
        click.echo(f"{d['domain']:<16} {d['natural']:>8.3f} {d['uniform']:>8.3f} {d['weight']:>8.3f} {d['epochs']:>7.2f}")
    note = unhelped_note(record)
    if note:
        click.echo(f"note: {note}")
    if record.get("guard"):
        click.echo(f"macro guard: moved {record['guard']['alpha']:.2f} of the way to the domains' own optimum")
    click.echo(f"weights: {Path(out) / 'weights.json'}   report: {Path(out) / 'report.md'}")
    if out_data:
        click.echo(f"resampled dataset: {out_data}")
