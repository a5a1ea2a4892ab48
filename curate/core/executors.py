"""datatrove executors for the applications' pipelines: local, Slurm and Ray, chained stage after stage.

An application's job is a few datatrove pipelines run one after another (e.g. score -> global cut -> filter ->
report). Stages that work document by document run as many tasks; a stage that needs the whole pool at once
(a global threshold, a report) runs as one task. `chain_executors` builds one executor per stage, each depending
on the one before, so running the last runs them all, on any of the three executors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datatrove.executor import LocalPipelineExecutor

from ..errors import CurateError

EXECUTORS = ("local", "slurm", "ray")


@dataclass(frozen=True)
class Execution:
    """How a job's pipelines run; none of it changes what they compute."""

    executor: str = "local"
    tasks: int = 1  # datatrove tasks of the per-document stages
    workers: int = 1  # of them at once
    options: dict[str, Any] = field(default_factory=dict)  # passed to the executor (e.g. Slurm partition, time)

    def check(self) -> None:
        if self.executor not in EXECUTORS:
            raise CurateError(f"executor {self.executor!r} is not one of {list(EXECUTORS)}")
        if self.tasks < 1 or self.workers < 1:
            raise CurateError("tasks and workers must be at least 1")
        if self.executor == "slurm" and "partition" not in self.options:
            raise CurateError("the Slurm executor needs a partition: pass executor_options={'partition': ...}")


def chain_executors(pipelines: dict[str, list], execution: Execution, logs: Path, name: str,
                    single_task: tuple[str, ...] = ()) -> list:
    """One executor per stage, in order, each depending on the one before; the `single_task` stages run as one task."""
    execution.check()
    executors, previous = [], None
    for stage, pipeline in pipelines.items():
        many = stage not in single_task
        executor = build_executor(
            execution, pipeline, execution.tasks if many else 1, execution.workers if many else 1,
            str(Path(logs) / stage), previous, f"{name}-{stage}",
        )
        executors.append(executor)
        previous = executor
    return executors


def build_executor(execution: Execution, pipeline: list, tasks: int, workers: int, logging_dir: str, depends, job_name: str):
    options = dict(execution.options)
    if execution.executor == "local":
        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir, depends=depends, **options)
    if execution.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        options.setdefault("time", "02:00:00")
        return SlurmPipelineExecutor(
            pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir, depends=depends, job_name=job_name, **options,
        )
    from datatrove.executor import RayPipelineExecutor

    return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir, depends=depends, **options)


def run_chain(executors: list, execution: Execution) -> None:
    """Run the chain through its last executor (datatrove runs what it depends on first)."""
    if execution.executor == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
    executors[-1].run()
