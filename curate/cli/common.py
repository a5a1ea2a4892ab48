"""What every curate command shares: offline mode, KEY=VALUE options, reading a saved configuration back, errors.

The rerun scheme, the same for every command: a rerun with the same settings resumes (finished work is reused, an
interrupted stage continues); a rerun whose settings differ from what the output holds is refused with a message
that names what changed; `--overwrite` replaces it. Every command that builds something saves its settings beside
it, and `--config FILE` reads them back as the command's defaults (options given on the command line still win).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from stride_engine import StrideError, distributed

from ..errors import CurateError

DEVICES = ("cpu", "cuda", "auto")


def offline() -> None:
    # Nothing here downloads: models, tokenizers, tasks and data come from local folders.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def echo(message: str) -> None:
    """click.echo from the first process only: under torchrun every process runs the command, one of them speaks."""
    if distributed.is_main():
        click.echo(message)


def quiet_progress(quiet: bool) -> None:
    """--quiet: no progress bars from this process or the libraries it drives (tqdm reads TQDM_DISABLE)."""
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its weight-loading bar ignores TQDM_DISABLE


def parse_overrides(pairs: tuple[str, ...], option: str = "--set") -> dict[str, Any]:
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=option)
        key, value = pair.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def saved_config_option(what: str, to_options: Callable[[dict], dict[str, Any]], help_text: str | None = None):
    """`--config FILE`: the settings a command saved beside its output become its defaults. `to_options` maps the
    saved values to the command's parameter names (and their command-line forms)."""

    def load(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
        if value is None:
            return None
        try:
            text = value.read_text()
            values = json.loads(text) if value.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise click.BadParameter(f"cannot read {value}: {err}", param_hint="--config") from err
        if not isinstance(values, dict):
            raise click.BadParameter(f"{value} does not hold a mapping of settings", param_hint="--config")
        ctx.default_map = {**(ctx.default_map or {}), **{k: v for k, v in to_options(values).items() if v is not None}}
        return value

    return click.option(
        "--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
        callback=load, help=help_text or f"Read the settings back from a saved {what}; options given here still win.",
    )


def fail(err: Exception) -> click.ClickException:
    """A curate or engine error as a one-line message (no traceback): bad input, named, with how to fix it. A full
    disk or an unwritable folder says so; every output is written atomically, so what was finished is kept."""
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        advice = ""
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
            advice = (". Nothing half-written was left and the stages finished before it are kept: free space or fix "
                      "the folder's permissions, then rerun the same command to resume")
        return click.ClickException(f"{err.strerror or err}{where}{advice}")
    return click.ClickException(str(err))


USER_ERRORS = (CurateError, StrideError, OSError)
