"""Mixture reweighting: new weights for a corpus's domains from their influence on a target, and the resampled corpus.

    request.py   ReweightRequest: what a reweighting is asked to do
    weights.py   the rule: per-domain influence per token -> weights (tilted prior, smoothing, UniMax epoch cap)
    mixture.py   the run's documents grouped into domains, their influence, the weights record
    steps.py     the datatrove steps: DomainWeights, MixtureSampler, ReweightReport
    pipeline.py  the pipelines and their chained executors (local, Slurm, Ray)
    job.py       check_request, run_reweight
    report.py    the Markdown table and the plot
"""

from .job import check_request, run_reweight
from .request import ReweightRequest
from .steps import DomainWeights, MixtureSampler, ReweightReport
from .weights import MixtureRule, mixture_weights

__all__ = ["DomainWeights", "MixtureRule", "MixtureSampler", "ReweightReport", "ReweightRequest", "check_request",
           "mixture_weights", "run_reweight"]
