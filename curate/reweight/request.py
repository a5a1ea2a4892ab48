"""What a reweighting is asked to do: `ReweightRequest`, saved as OUT/.work/request.json and in the manifest."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.executors import Execution
from .weights import MixtureRule

REQUEST_FILE = Path(".work") / "request.json"  # inside OUT: what the weights were made with
GROUPS_AS_DOMAINS = "groups"  # --domain-field groups: the run's recovery groups stand in for missing domain labels
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
    # How a document's influence aggregates over the target's queries (curate.core.run.document_influence). "positive"
    # (the mean of the positive parts): on the demo's planted targets the signed mean gave the arithmetic domain a
    # negative influence on arithmetic problems (its documents move them strongly both ways) and left a facts target's
    # domains even; "positive" and "topk-hits" put both where the planted truth is (docs/reweight.md).
    rule: str = "positive"
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

    def mixture_rule(self) -> MixtureRule:
        return MixtureRule(self.eta, self.smoothing, self.max_epochs, self.mode, self.prior)

    def execution(self) -> Execution:
        return Execution(self.executor, self.tasks, self.workers, dict(self.executor_options))

    def fingerprint(self) -> dict[str, Any]:
        """What decides the weights and the mixture (a rerun into the same OUT must match it)."""
        values = asdict(self)
        for key in ("executor", "tasks", "workers", "executor_options", "out"):
            values.pop(key)
        return json.loads(json.dumps(values))
