"""What a reweighting is asked to do: `ReweightRequest`, saved as OUT/.work/request.json and in the manifest."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.executors import Execution
from ..core.run import AGGREGATION_RULES
from .domain_effects import DOMAIN_REGRESSION
from .domain_operators import DOMAIN_OPERATORS
from .weights import MixtureRule

REQUEST_FILE = Path(".work") / "request.json"  # inside OUT: what the weights were made with
GROUPS_AS_DOMAINS = "groups"  # --domain-field groups: the run's recovery groups stand in for missing domain labels
# How STRIDE's measurements become per-domain influence: the regression on the design (curate.reweight.domain_effects),
# operators trained on whole domains (curate.reweight.domain_operators), or an aggregation of per-document scores summed per domain (curate.core.run.document_influence)
# `auto`: the regression when the run passes the own-domain check (curate.reweight.domain_effects.own_domain_check),
# else the positive parts of each document's scores
AUTO, AUTO_FALLBACK = "auto", "positive"
RULES = (AUTO, DOMAIN_REGRESSION, DOMAIN_OPERATORS, *AGGREGATION_RULES)
SIGNALS = ("bm25", "embedding", "dsir")  # the baselines whose document scores can stand in for influence (not random)


@dataclass(frozen=True)
class ReweightRequest:
    run: str
    target: str | None  # None only with `weights` (a given mixture needs no target)
    out: str
    domain_field: str = "domain"
    tokens: str | None = None  # the mixture's token budget ("50M"); None: as many tokens as the corpus has
    out_data: str | None = None  # a folder for the resampled dataset
    mode: str = "target"
    eta: float = 1.0
    smoothing: float = 0.2
    max_epochs: float = 4.0
    prior: str = "natural"
    # How influence becomes weights (curate.reweight.weights.WEIGHTINGS): "proportional" (each domain's share of the
    # target's total positive influence: the optimum of a log-law loss; no eta), or "tilt" (prior * exp(eta * score)).
    # Proportional is the default: on the study it beats natural on both targets where the tilt loses on both, and on
    # the demo runs it moves no domain as far (benchmarks/results/reweight_rule.md, reweight_null.md)
    weighting: str = "proportional"
    # "macro": the mixture moved towards the domains' own optimum until their predicted mean loss is no worse than the
    # natural mixture's, every domain's loss falling alike with the log of its share; "measured": those slopes read
    # from the domain operators' doses on held-out chunks (rule domain-operators only); "none": the rule's mixture as it
    # is. Macro is the default: with the domain-operators reading it beats natural and uniform on two of the study's
    # three targets at macro bpb within 0.1% of natural's, where the unguarded reading costs +1% to +6.5% (docs/reweight.md,
    # benchmarks/results/reweight.md). curate.reweight.weights
    guard: str = "macro"
    # How STRIDE's measurements become each domain's influence (RULES); None picks the default: `domain-operators`
    # (operators trained on whole domains, curate.reweight.domain_operators) for STRIDE, `positive` (each document's
    # positive scores summed over its domain's tokens) for a baseline's scores, which have no operators to train.
    # Chosen on the study (benchmarks/results/reweight.md: under the macro guard it beats the `positive` reading on
    # `mixed` and `wiki-military` and ties it on `gsm8k`, at a thirteenth of the cost and with no STRIDE fit) and on the
    # demo corpus, where it keeps the natural mixture, which retraining found as good as any (reweight_demo.md).
    # A given mixture (`weights`) reads nothing; its field keeps the former default, `positive`, so that earlier
    # resamplings still match their rerun.
    rule: str | None = None
    part_field: str = "part"
    # The per-document signal: STRIDE's influence, or a model-free baseline's score of each document against the target
    # (curate.core.baselines: bm25, embedding, dsir), put through the same rule (the similarity-only ablation).
    method: str = "stride"
    # A mixture given outright (domain -> weight, summing to one): no target and no influence, only the epochs, the
    # report and the resampled dataset (a mixture from another tool, applied the same way as the rule's).
    weights: dict[str, float] | None = None
    task_dirs: tuple[str, ...] = ()
    target_limit: int | None = None
    seed: int = 0  # of the resampling
    output_format: str = "jsonl"
    executor: str = "local"
    tasks: int = 1
    workers: int = 1
    executor_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule is None:
            reads_operators = self.method == "stride" and self.target is not None
            object.__setattr__(self, "rule", DOMAIN_OPERATORS if reads_operators else AUTO_FALLBACK)

    def mixture_rule(self) -> MixtureRule:
        return MixtureRule(self.eta, self.smoothing, self.max_epochs, self.mode, self.prior, self.weighting, self.guard)

    def execution(self) -> Execution:
        return Execution(self.executor, self.tasks, self.workers, dict(self.executor_options))

    def fingerprint(self) -> dict[str, Any]:
        """What decides the weights and the mixture (a rerun into the same OUT must match it)."""
        values = asdict(self)
        for key in ("executor", "tasks", "workers", "executor_options", "out"):
            values.pop(key)
        if values["weighting"] == "tilt":  # the only weighting before it was an option: older outputs still match it
            values.pop("weighting")
        if values["guard"] == "none" or values["target"] is None:  # reweightings made before the guard existed, and
            values.pop("guard")  # given mixtures (which nothing guards), still match their rerun
        return json.loads(json.dumps(values))
