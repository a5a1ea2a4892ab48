"""The `curate` command line, one module per part of the workflow:

    run.py     fit, attribute, top   an attribution run: train the operators, attribute queries, read the scores
    select.py  select                data selection under a budget
    contamination.py  contamination  a contamination audit of a corpus for benchmark items, and a clean copy
    reweight.py  reweight          new mixture weights for the corpus's domains, and the resampled corpus
    proxy.py   retrain, eval         the check every application shares: a proxy trained on a dataset, lm-eval
    study.py   recipe, demo          a whole study from a recipe; the embedded demo
    common.py  offline mode, the rerun scheme, reading a saved configuration back (--config)
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from .common import offline
from .contamination import contamination_command
from .proxy import eval_command, retrain
from .reweight import reweight_command
from .run import attribute, fit, top
from .select import select_command
from .study import demo, recipe_command


class WorkflowGroup(click.Group):
    """Lists the commands in the order a user runs them, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=WorkflowGroup)
@click.version_option(__version__, prog_name="curate")
def main() -> None:
    """curate: which training documents shaped a model's behaviour (STRIDE attribution), and acting on it.

    fit -> select -> retrain -> eval; `contamination` audits a corpus for benchmark items; `reweight` reweights its domains; `recipe` runs a whole study, `demo` the embedded example.
    """
    offline()


for command in (fit, attribute, top, select_command, contamination_command, reweight_command, retrain, eval_command, recipe_command, demo):
    main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())
