"""`curate contamination`: which benchmark items a training corpus holds, and which documents hold them (curate.contamination)."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.executors import EXECUTORS
from ..contamination.verdict import MIN_K_PP, REFERENCE_GAP
from .common import USER_ERRORS, fail, parse_overrides, quiet_progress, saved_config_option


class _OptionalFloat(click.ParamType):
    """A number, or 'none' for a threshold that is off."""

    name = "NUMBER|none"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, float):
            return value
        if str(value).strip().lower() in ("none", "off"):
            return None
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'none'", param, ctx)


OPTIONAL_FLOAT = _OptionalFloat()


@click.command("contamination")
@saved_config_option("audit request (AUDIT/.work/request.json)", lambda values: {"run_dir" if k == "run" else k: v for k, v in values.items()})
@click.option("--benchmark", "benchmarks", multiple=True, required=True,
              help="JSONL/Parquet of benchmark items, or an lm-eval task name or YAML (repeatable: several benchmarks at once).")
@click.option("--train", multiple=True, required=True, type=click.Path(path_type=Path), help="Training corpus files, JSONL or Parquet (repeatable).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Audit folder (items.parquet, documents.parquet, report.md, report.html).")
@click.option("--text-field", default="text", show_default=True, help="The corpus's text field.")
@click.option("--id-field", default="id", show_default=True, help="The corpus's id field (without one: <file stem>:<line>).")
@click.option("--question-field", default="question", show_default=True, help="The benchmark items' question field.")
@click.option("--answer-field", default="answer", show_default=True, help="The items' answer field ('' when they have none).")
@click.option("--item-id-field", default="id", show_default=True, help="The items' id field.")
@click.option("--context-field", "context_fields", multiple=True, help="A passage/context field the items come with (repeatable).")
@click.option("--task-dir", "task_dirs", multiple=True, type=click.Path(path_type=Path), help="Extra folder of lm-eval task YAMLs.")
@click.option("--item-limit", type=click.IntRange(min=1), default=None, help="Audit only the first N items of each benchmark.")
@click.option("--question-n", default=8, show_default=True, type=click.IntRange(min=2), help="n of the questions' exact n-grams.")
@click.option("--answer-n", default=6, show_default=True, type=click.IntRange(min=2), help="n of the answers' n-grams (a shorter answer is matched whole).")
@click.option("--answer-min-words", default=3, show_default=True, type=click.IntRange(min=1), help="An answer with fewer words is not evidence alone.")
@click.option("--contaminated-coverage", default=0.8, show_default=True, type=float, help="Coverage of a question or answer that makes an item contaminated.")
@click.option("--suspicious-coverage", default=0.5, show_default=True, type=float, help="Coverage that makes it suspicious.")
@click.option("--fuzzy/--no-fuzzy", default=True, show_default=True, help="The MinHash signal for edited copies of the questions.")
@click.option("--fuzzy-similarity", default=0.6, show_default=True, type=float, help="Share of a question's word bigrams in one window of a document.")
@click.option("--number-recall", default=0.8, show_default=True, type=float, help="Share of the question's numbers in that window (a copy keeps them).")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="A fitted run over this corpus (curate fit): adds attribution, and memorisation under the run's model.")
@click.option("--model", type=click.Path(path_type=Path), default=None, help="The audited model alone (memorisation only), without a run.")
@click.option("--reference-model", type=click.Path(path_type=Path), default=None, help="A model that did not see the corpus: the loss gap.")
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(min=1), help="Documents per item from the attribution.")
@click.option("--min-k", default=0.2, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="Min-K%++'s share of tokens.")
@click.option("--attribution-z", type=OPTIONAL_FLOAT, default=None, help="Flag a top-k document whose z reaches this (default: report only).")
@click.option("--min-k-pp", type=OPTIONAL_FLOAT, default=MIN_K_PP, show_default=True,
              help="Call an item suspicious when its Min-K%++ reaches this ('none': report only; chosen by the audit study).")
@click.option("--reference-gap", type=OPTIONAL_FLOAT, default=REFERENCE_GAP, show_default=True,
              help="... when the loss gap to the reference (nats/token) reaches this ('none': report only).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto: where the model runs.")
@click.option("--decontaminate", type=click.Path(path_type=Path), default=None, help="Also write a clean copy of the corpus here (kept/, excluded/).")
@click.option("--remove", default="documents", show_default=True, type=click.Choice(["documents", "spans"]),
              help="Drop whole flagged documents, or cut only the matched spans out of them.")
@click.option("--format", "output_format", default="jsonl", show_default=True, type=click.Choice(["jsonl", "parquet"]), help="Of the clean copy.")
@click.option("--check", is_flag=True, help="Retrain a proxy on the corpus and on its clean copy (--decontaminate) and score both on "
              "the flagged and the clean items: how much the contamination inflates the score (AUDIT/check).")
@click.option("--check-steps", default=400, show_default=True, type=click.IntRange(min=1), help="Training steps of each proxy of the check.")
@click.option("--check-seeds", default="0,1,2", show_default=True, help="The check's proxy seeds (comma-separated).")
@click.option("--check-seq-len", default=128, show_default=True, type=click.IntRange(min=2), help="The check's proxy training length.")
@click.option("--check-text", default="{question}\n{answer}", show_default=True, help="How an item is written for its score.")
@click.option("--executor", default="local", show_default=True, type=click.Choice(EXECUTORS))
@click.option("--executor-tasks", "tasks", default=1, show_default=True, type=click.IntRange(min=1), help="datatrove tasks of the per-document stages.")
@click.option("--executor-workers", "workers", default=1, show_default=True, type=click.IntRange(min=1), help="datatrove tasks run at once.")
@click.option("--executor-option", "executor_options", multiple=True, metavar="KEY=VALUE", help="Passed to the executor (e.g. partition=cpu for Slurm).")
@click.option("--overwrite", is_flag=True, help="Replace an audit in AUDIT (and its clean copy) made with other settings.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def contamination_command(benchmarks, train, out, text_field, id_field, question_field, answer_field, item_id_field, context_fields,
                          task_dirs, item_limit, question_n, answer_n, answer_min_words, contaminated_coverage, suspicious_coverage,
                          fuzzy, fuzzy_similarity, number_recall, run_dir, model, reference_model, top_k, min_k, attribution_z, min_k_pp, reference_gap, device,
                          decontaminate, remove, output_format, check, check_steps, check_seeds, check_seq_len, check_text, executor, tasks, workers, executor_options, overwrite, quiet, config_path):
    """Which benchmark items a training corpus holds, which documents hold them (exact n-gram evidence with spans; with
    --run, the documents each item's attribution points to and how well the model knows it), a verdict per item, and a clean copy."""
    from ..contamination import AuditRequest, run_audit

    quiet_progress(quiet)
    request = AuditRequest(
        benchmarks=tuple(map(str, benchmarks)), train=tuple(map(str, train)), out=str(out), text_field=text_field, id_field=id_field,
        question_field=question_field, answer_field=answer_field, item_id_field=item_id_field, context_fields=tuple(context_fields),
        task_dirs=tuple(map(str, task_dirs)), item_limit=item_limit, question_n=question_n, answer_n=answer_n,
        answer_min_words=answer_min_words, contaminated_coverage=contaminated_coverage, suspicious_coverage=suspicious_coverage,
        fuzzy=fuzzy, fuzzy_similarity=fuzzy_similarity, number_recall=number_recall, run=str(run_dir) if run_dir else None, model=str(model) if model else None,
        reference_model=str(reference_model) if reference_model else None, top_k=top_k, min_k=min_k,
        attribution_z=attribution_z, min_k_pp=min_k_pp, reference_gap=reference_gap, device=device,
        decontaminate=str(decontaminate) if decontaminate else None, remove=remove, output_format=output_format,
        check=check, check_steps=check_steps, check_seeds=_seeds(check_seeds), check_seq_len=check_seq_len,
        check_text=check_text.replace("\\n", "\n"),
        executor=executor, tasks=tasks, workers=workers, executor_options=parse_overrides(executor_options, "--executor-option"),
    )
    try:
        manifest = run_audit(request, overwrite=overwrite)
    except USER_ERRORS as err:
        raise fail(err) from err
    if not manifest:
        click.echo(f"submitted; the manifest appears in {out} when the last stage finishes")
        return
    for row in manifest["counts"]:
        click.echo(f"{row['benchmark']}: {row['items']} items, {row['contaminated']} contaminated, {row['suspicious']} suspicious, {row['clean']} clean")
    click.echo(f"{manifest['flagged_pairs']} (item, document) pairs flagged over {manifest['flagged_documents']} documents")
    click.echo(f"report: {Path(out) / 'report.md'}   review page: {Path(out) / 'report.html'}")
    if decontaminate:
        click.echo(f"clean copy: {Path(decontaminate) / 'kept'}")
    if "check" in manifest:
        summary = manifest["check"]["summary"]
        for group, values in summary["groups"].items():
            click.echo(f"{group} items: {values['original']:.4f} bits/byte on the corpus, {values['decontaminated']:.4f} on the clean copy "
                       f"({values['change']:+.4f})")
        if "inflation_bits_per_byte" in summary:
            click.echo(f"inflation: {summary['inflation_bits_per_byte']:+.4f} bits/byte; table: {Path(out) / 'check' / 'inflation.md'}")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 0,1,2, got {text!r}", param_hint="--check-seeds") from None
    if not seeds:
        raise click.BadParameter("give at least one seed", param_hint="--check-seeds")
    return seeds
