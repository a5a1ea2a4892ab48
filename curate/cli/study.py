"""`curate recipe` (a whole study of an application from a YAML recipe) and `curate demo` (the embedded demo)."""

from __future__ import annotations

from pathlib import Path

import click

from stride_engine import PRESETS, preset

from .common import USER_ERRORS, fail, parse_overrides, quiet_progress


@click.command("recipe")
@click.argument("recipe_file", type=click.Path(path_type=Path))
@click.option("--smoke", is_flag=True, help="Apply the recipe's `smoke:` overrides (a few minutes).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Proxies trained in parallel (default: the recipe's).")
@click.option("--results", type=click.Path(path_type=Path), default=None, help="Where the result rows go (default: the recipe's).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def recipe_command(recipe_file, smoke, workers, results, quiet):
    """Run a whole study from a recipe: data, reference model, STRIDE run, the application's jobs, proxies, lm-eval."""
    from ..studies.recipe import run_recipe

    quiet_progress(quiet)
    try:
        path = run_recipe(recipe_file, smoke=smoke, workers=workers, results=results, progress=not quiet)
    except USER_ERRORS as err:
        raise fail(err) from err
    click.echo(f"results: {path}  table: {path.with_suffix('.md')}  plot: {path.with_suffix('.png')}")


@click.command()
@click.option("--out", "out_dir", default=Path("runs/demo"), show_default=True, type=click.Path(path_type=Path))
@click.option("--preset", "preset_name", default="cpu-smoke", show_default=True, type=click.Choice(sorted(PRESETS)))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one configuration value.")
@click.option("--show", default=4, show_default=True, help="How many queries to print.")
@click.option("--quick", is_flag=True, help="A smaller corpus (about 600 documents, 48 facts) and model: about a minute.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out_dir, preset_name, overrides, show, quick, quiet):
    """Generate the embedded corpus, train the demo model, attribute the planted-fact queries, print the results."""
    from ..demo.run import run_demo

    quiet_progress(quiet)
    try:
        run_demo(out_dir, preset(preset_name, **parse_overrides(overrides)), show=show, quick=quick, progress=not quiet)
    except USER_ERRORS as err:
        raise fail(err) from err
