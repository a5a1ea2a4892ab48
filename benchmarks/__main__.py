"""`python -m benchmarks run --suite smoke|full [--setting S] [--method M]`, `python -m benchmarks report FILE`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from .report import write_report
from .runner import RESULTS, compute_ground_truth, run_suite
from .suites import SUITES


@click.group()
def main() -> None:
    """Attribution benchmark: LDS and top-k removal against explicit retraining, time and peak memory."""


@main.command()
@click.option("--suite", type=click.Choice(sorted(SUITES)), default="smoke", show_default=True)
@click.option("--setting", "settings", multiple=True, help="Run only these settings (repeatable).")
@click.option("--method", "methods", multiple=True, help="Run only these methods (repeatable); other rows are kept.")
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default=True)
def run(suite: str, settings: tuple[str, ...], methods: tuple[str, ...], out: Path) -> None:
    """Compute (or reuse) the ground truth, run every method, write results JSON, Markdown and plots."""
    path = run_suite(SUITES[suite], list(settings) or None, list(methods) or None, out, command=_command())
    report = write_report(path)
    click.echo(f"results: {path}\nreport: {report}")


@main.command("ground-truth")
@click.option("--suite", type=click.Choice(sorted(SUITES)), default="full", show_default=True)
@click.option("--setting", "settings", multiple=True, help="Only these settings (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default=True)
def ground_truth(suite: str, settings: tuple[str, ...], out: Path) -> None:
    """Compute (or confirm) the ground truth of a suite's settings without running any method."""
    for path in compute_ground_truth(SUITES[suite], list(settings) or None, out):
        click.echo(path)


@main.command()
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def report(results: Path) -> None:
    """Regenerate the Markdown table and plots from a results JSON."""
    click.echo(write_report(results))


def _command() -> str:
    return "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])


if __name__ == "__main__":
    main()
