"""curate: which training documents shaped a language model's behaviour (STRIDE attribution), and acting on it.

    core/     what the applications share: the open run, targets, baselines, budgets, executors, readers
    select/   data selection (curate select): request, influence, datatrove steps, pipeline, manifest, study
    proxy/    the shared check: retrain a proxy on a dataset, evaluate it with lm-eval
    studies/  the application-neutral study runner (curate recipe)
    cli/      the click commands
    demo/     the embedded demo (no downloads)
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("curate")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0+source"
