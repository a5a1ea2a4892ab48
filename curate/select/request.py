"""What a selection is asked to do: `SelectionRequest`, saved as OUT/.work/request.json and in the manifest."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.executors import Execution
from ..core.targets import Target

REQUEST_FILE = Path(".work") / "request.json"  # inside OUT: what the selection was made with


@dataclass(frozen=True)
class SelectionRequest:
    run: str
    target: str
    budget: str
    out: str
    method: str = "stride"  # or a model-free baseline from curate.core.baselines: random, bm25, embedding, dsir
    seed: int = 0  # for the random and dsir baselines
    rule: str = "mean"
    k: int = 10  # queries' top k, for the "topk-hits" rule
    domain_floor: float = 0.0
    allocation: str = "greedy"  # or "proportional" (across the run's recovery groups), "balanced" (the target's parts)
    part_field: str = "part"  # the target items' field that names their part, for balanced allocation
    output_format: str = "jsonl"
    task_dirs: tuple[str, ...] = ()
    target_limit: int | None = None
    executor: str = "local"
    tasks: int = 1  # datatrove tasks of the per-document stages
    workers: int = 1
    executor_options: dict[str, Any] = field(default_factory=dict)  # e.g. Slurm partition/time, passed through

    def fingerprint(self) -> dict[str, Any]:
        """What decides the selection (a rerun into the same OUT must match it; how it is executed may change)."""
        values = asdict(self)
        for key in ("executor", "tasks", "workers", "executor_options", "out"):
            values.pop(key)
        return json.loads(json.dumps(values))  # as it reads back from request.json (tuples become lists)

    def execution(self) -> Execution:
        return Execution(self.executor, self.tasks, self.workers, dict(self.executor_options))


def describe_request(request: SelectionRequest, target: Target | None = None) -> dict[str, Any]:
    """The request as the manifest records it, with what the target became in the run."""
    values = {key: value for key, value in asdict(request).items() if key != "executor_options"}
    if target is not None:
        values["target_run_name"] = target.name  # the score store inside the run: RUN/scores/<name>
        values["target_items"] = target.items
        values["target_queries"] = len(target.queries)  # more than the items where long items became windows
        values["target_items_truncated"] = target.truncated
        values["target_items_windowed"] = target.windowed
        values["target_parts"] = {label: len(queries) for label, queries in target.part_queries().items()}  # queries per part
    return values
