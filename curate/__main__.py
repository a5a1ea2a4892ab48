"""`python -m curate ...`: the CLI, for launchers that run a module (e.g. `torchrun --nproc-per-node 2 -m curate fit ...`)."""

from .cli import main

main()
