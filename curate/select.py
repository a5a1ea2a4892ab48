"""`curate select`: keep the part of a run's training pool that helps a target most, under a budget.

    OUT/selected/       the kept documents (original fields + `influence`, `influence_rank`), datatrove writer
    OUT/excluded/       the others, each with `exclusion_reason`
    OUT/selection.parquet   every document: doc_id, score, tokens, domain, rank, selected, reason
    OUT/manifest.json   run, target, budget, rule, counts per domain, score distribution, selected ids/scores/ranks
    OUT/scores.png      the score distribution and the cut
    OUT/.work/          score shards, the request, datatrove logs and completion markers (what a resume reuses)

Everything that can be wrong with the input (budget, rule, run, target, output folder) is checked before OUT is
created. A rerun into a finished or partial OUT refuses unless told to `resume` (same request: finished tasks are
skipped) or to `overwrite` (OUT is removed first).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader, ParquetReader
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
from filelock import FileLock

from stride_engine import Queries, ScoreStore, StrideConfig, StrideError, read_documents
from stride_engine.artifacts import atomic_path, atomic_write_text
from stride_engine.config import stage_fields
from stride_engine.corpus import PARQUET_SUFFIXES

from .budget import PART_SCORE, check_allocation, parse_budget
from .errors import CurateError
from .pipeline.selection import SELECTION_FILE, BudgetThreshold, InfluenceFilter, InfluenceScorer
from .pipeline.report import SelectionReport
from .runs import (
    AGGREGATION_RULES, RunInputs, attribute_target, document_groups, document_influence, document_tokens, open_run,
)
from .retrain import max_positions
from .similarity import METHODS, similarity_scores
from .targets import Target, load_target

EXECUTORS = ("local", "slurm", "ray")


@dataclass(frozen=True)
class SelectionRequest:
    run: str
    target: str
    budget: str
    out: str
    method: str = "stride"  # or a model-free baseline from curate.similarity: random, bm25, embedding, dsir
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
    tasks: int = 1
    workers: int = 1
    executor_options: dict[str, Any] = field(default_factory=dict)  # e.g. Slurm partition/time, passed through

    def fingerprint(self) -> dict[str, Any]:
        """What decides the selection (a resume must match it; how it is executed may change)."""
        values = asdict(self)
        for key in ("executor", "tasks", "workers", "executor_options", "out"):
            values.pop(key)
        return values


# ------------------------------------------------------------------------------------------ the target


def target_for_run(run_dir: Path, spec: str, task_dirs: list[Path], limit: int | None = None, part_field: str = "part") -> Target:
    from transformers import AutoConfig, AutoTokenizer

    inputs = RunInputs.load(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(inputs.model)
    model_config = AutoConfig.from_pretrained(inputs.model)
    target = load_target(spec, tokenizer, max_positions(model_config) or 1 << 30, task_dirs, limit, part_field)
    recovery = stage_fields(StrideConfig.load(Path(run_dir) / "config.yaml"), "scores")
    digest = hashlib.sha1(json.dumps([target.queries.ids, target.queries.prompts, target.queries.completions, recovery]).encode())
    # The digest in the name: a target file edited since an earlier selection, or a run rescored with other recovery
    # settings since (`curate fit ... --set groups=16 --force`), gets its own score store instead of a stale one.
    return dataclasses.replace(target, name=f"{target.name}-{digest.hexdigest()[:8]}")


def prepare_target(run_dir: Path, spec: str, task_dirs: list[Path], limit: int | None = None) -> tuple[ScoreStore, Target]:
    """The target's score store in the run, computed once (whichever process gets the lock first)."""
    target = target_for_run(Path(run_dir), spec, task_dirs, limit)
    return _score_store(Path(run_dir), target.name, target.queries), target


def prepare_parts(
    run_dir: Path, spec: str, task_dirs: list[Path], limit: int | None = None, part_field: str = "part",
) -> tuple[dict[str, ScoreStore], Target]:
    """One score store per part of the target (its own queries), computed once; a target of one part has its
    whole store. Each query's scores are recovered alone, so a part's are the same as in the whole target's store."""
    run_dir = Path(run_dir)
    target = target_for_run(run_dir, spec, task_dirs, limit, part_field)
    return {label: _score_store(run_dir, name, queries) for label, (name, queries) in part_sets(target).items()}, target


def _score_store(run_dir: Path, name: str, queries: Queries) -> ScoreStore:
    with FileLock(str(run_dir / ".curate-target.lock")):
        try:
            store = ScoreStore(run_dir / "scores" / name)
            if store.is_current():
                return store
        except StrideError:  # not computed yet
            pass
        # computed now, or rewritten from its kept responses when an older version wrote it without an aggregate
        return attribute_target(open_run(run_dir), queries, name)


def part_sets(target: Target) -> dict[str, tuple[str, Queries]]:
    """Each part's query set in the run: its name and queries. A one-part target's is the target's own; a part's
    name holds the target's (its queries' digest), the part's, and a digest of which queries the part holds, so
    items moved to another part get new stores."""
    parts = target.part_queries()
    if len(parts) == 1:
        return {label: (target.name, queries) for label, queries in parts.items()}
    sets = {}
    for label, queries in parts.items():
        digest = hashlib.sha1(json.dumps([label, queries.ids]).encode()).hexdigest()[:6]
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in label)[:40]
        sets[label] = (f"{target.name}-part-{safe}-{digest}", queries)
    return sets


def influence_table(
    run_dir: str | Path, spec: str, rule: str, k: int, task_dirs: list[Path], limit: int | None = None,
    method: str = "stride", seed: int = 0, by_part: bool = False, part_field: str = "part",
) -> pl.DataFrame:
    """doc_id, domain, influence, tokens, group (the run's recovery group; null without) for every pool document;
    with `by_part`, also each part of the target's own scores (`part_score:<part>`, for balanced allocation)."""
    run_dir = Path(run_dir)
    if by_part:
        influence = _influence_by_part(run_dir, spec, rule, k, task_dirs, limit, method, seed, part_field)
    elif method == "stride":
        store, _ = prepare_target(run_dir, spec, task_dirs, limit)
        influence = document_influence(store, rule, k)
    else:
        influence = baseline_scores(run_dir, spec, task_dirs, limit, method, seed)
    table = influence.join(document_tokens(run_dir), on="doc_id", how="left").with_columns(pl.col("tokens").fill_null(0))
    groups = document_groups(run_dir)
    if groups is None:
        return table.with_columns(group=pl.lit(None, dtype=pl.Int64))
    return table.join(groups, on="doc_id", how="left")


def _influence_by_part(run_dir: Path, spec: str, rule: str, k: int, task_dirs: list[Path], limit: int | None,
                       method: str, seed: int, part_field: str) -> pl.DataFrame:
    """The whole target's influence and every part's. For STRIDE the whole is the parts' aggregates put together
    (the mean over all queries is the parts' means weighted by their sizes; hits add up), so no query is scored twice;
    a baseline scores the whole target and each part on its own."""
    if method == "stride":
        stores, target = prepare_parts(run_dir, spec, task_dirs, limit, part_field)
        per_part = {label: document_influence(store, rule, k) for label, store in stores.items()}
        sizes = {label: len(queries) for label, queries in target.part_queries().items()}
        weight = {label: 1.0 if rule == "topk-hits" else size / sum(sizes.values()) for label, size in sizes.items()}
        whole = pl.sum_horizontal(pl.col(PART_SCORE + label) * weight[label] for label in per_part).alias("influence")
    else:
        target = target_for_run(run_dir, spec, task_dirs, limit, part_field)
        per_part = {label: _baseline_table(run_dir, name, queries, method, seed)
                    for label, (name, queries) in part_sets(target).items()}
        whole = None
    table = next(iter(per_part.values())).select("doc_id", "domain")
    for label, frame in per_part.items():
        table = table.join(frame.select("doc_id", pl.col("influence").alias(PART_SCORE + label)), on="doc_id", how="left")
    if whole is None:  # a baseline's own score of the whole target (the target was loaded once, above)
        overall = _baseline_table(run_dir, target.name, target.queries, method, seed)
        table = table.join(overall.select("doc_id", "influence"), on="doc_id", how="left")
    else:
        table = table.with_columns(whole)
    return table.select("doc_id", "domain", "influence", pl.col(f"^{PART_SCORE}.*$"))


def baseline_scores(run_dir: Path, spec: str, task_dirs: list[Path], limit: int | None, method: str, seed: int) -> pl.DataFrame:
    """A model-free baseline's scores of the run's pool against the target, computed once and kept in the run."""
    target = target_for_run(run_dir, spec, task_dirs, limit)
    return _baseline_table(run_dir, target.name, target.queries, method, seed)


def _baseline_table(run_dir: Path, name: str, queries: Queries, method: str, seed: int) -> pl.DataFrame:
    """A baseline's scores of the pool against one query set (a target or a part), kept in RUN/baselines/."""
    if method not in METHODS:
        raise CurateError(f"selection method {method!r} is not one of {['stride', *METHODS]}")
    path = run_dir / "baselines" / f"{method}-{name}-seed{seed}.parquet"
    with FileLock(str(run_dir / ".curate-target.lock")):
        if path.is_file():
            return pl.read_parquet(path)
        inputs = RunInputs.load(run_dir)
        config = StrideConfig.load(run_dir / "config.yaml")
        pool = read_documents(inputs.train, config.text_field, config.id_field, config.domain_field)
        items = [f"{p}{c}" for p, c in zip(queries.prompts, queries.completions)]
        scores = similarity_scores(method, list(pool.texts), items, seed)
        table = pl.DataFrame({"doc_id": pool.ids, "domain": pool.domains, "influence": scores.astype(float)},
                             schema={"doc_id": pl.String, "domain": pl.String, "influence": pl.Float64})
        with atomic_path(path) as tmp:
            table.write_parquet(tmp)
    return table


# ------------------------------------------------------------------------------------------ the pipeline


def pool_readers(files: list[Path], text_field: str, id_field: str) -> list:
    """One datatrove reader per training file of the run (readers chain: each passes on what came before)."""
    readers = []
    for path in files:
        options = dict(data_folder=str(path.parent), glob_pattern=path.name, text_key=text_field, id_key=id_field, recursive=False)
        if path.name.lower().endswith(PARQUET_SUFFIXES):
            readers.append(ParquetReader(**options, add_file_path=False))
        else:
            readers.append(JsonlReader(**options, compression="infer", add_file_path=False))
    return readers


def selection_pipelines(request: SelectionRequest, readers: list, target: Target | None = None) -> dict[str, list]:
    out = Path(request.out)
    work = out / ".work"
    writer = ParquetWriter if request.output_format == "parquet" else JsonlWriter
    task_dirs = list(request.task_dirs)
    scorer = dict(run_dir=request.run, target=request.target, rule=request.rule, k=request.k, task_dirs=task_dirs,
                  target_limit=request.target_limit, method=request.method, seed=request.seed,
                  by_part=request.allocation == "balanced", part_field=request.part_field)
    return {
        "score": [*readers, InfluenceScorer(**scorer, scores_folder=str(work / "scores"))],
        "threshold": [BudgetThreshold(str(work / "scores"), str(out), request.budget, request.domain_floor, request.allocation)],
        "filter": [
            *readers,
            InfluenceScorer(**scorer),
            InfluenceFilter(str(out), exclusion_writer=writer(str(out / "excluded"), expand_metadata=True)),
            writer(str(out / "selected"), expand_metadata=True),
        ],
        "report": [SelectionReport(str(out), describe_request(request, target))],
    }


def selection_executors(request: SelectionRequest, pipelines: dict[str, list]) -> list:
    """The four stages chained with `depends=`; the global stages (threshold, report) run as one task."""
    logs = Path(request.out) / ".work" / "logs"
    executors, previous = [], None
    for stage, pipeline in pipelines.items():
        many = stage in ("score", "filter")
        tasks = request.tasks if many else 1
        workers = request.workers if many else 1
        executor = _executor(request, pipeline, tasks, workers, str(logs / stage), previous, stage)
        executors.append(executor)
        previous = executor
    return executors


def _executor(request: SelectionRequest, pipeline, tasks: int, workers: int, logging_dir: str, depends, stage: str):
    options = dict(request.executor_options)
    if request.executor == "local":
        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir, depends=depends, **options)
    if request.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        options.setdefault("time", "02:00:00")
        if "partition" not in options:
            raise CurateError("the Slurm executor needs a partition: pass executor_options={'partition': ...}")
        return SlurmPipelineExecutor(
            pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir, depends=depends,
            job_name=f"curate-select-{stage}", **options,
        )
    from datatrove.executor import RayPipelineExecutor

    return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir, depends=depends, **options)


# ------------------------------------------------------------------------------------------ the job


def describe_request(request: SelectionRequest, target: Target | None = None) -> dict[str, Any]:
    values = {key: value for key, value in asdict(request).items() if key != "executor_options"}
    if target is not None:
        values["target_run_name"] = target.name  # the score store inside the run: RUN/scores/<name>
        values["target_items"] = target.items
        values["target_queries"] = len(target.queries)  # more than the items where long items became windows
        values["target_items_truncated"] = target.truncated
        values["target_items_windowed"] = target.windowed
        values["target_parts"] = {label: len(queries) for label, queries in target.part_queries().items()}  # queries per part
    return values


def check_request(request: SelectionRequest, resume: bool, overwrite: bool) -> Target:
    """Every check that needs no output folder; returns the target (its attribution is computed here)."""
    budget = parse_budget(request.budget)
    if request.method not in ("stride", *METHODS):
        raise CurateError(f"selection method {request.method!r} is not one of {['stride', *METHODS]}")
    if request.rule not in AGGREGATION_RULES:
        raise CurateError(f"aggregation rule {request.rule!r} is not one of {list(AGGREGATION_RULES)}")
    check_allocation(request.allocation)
    if request.output_format not in ("jsonl", "parquet"):
        raise CurateError(f"output format {request.output_format!r} is not 'jsonl' or 'parquet'")
    if request.executor not in EXECUTORS:
        raise CurateError(f"executor {request.executor!r} is not one of {list(EXECUTORS)}")
    if request.tasks < 1 or request.workers < 1:
        raise CurateError("tasks and workers must be at least 1")
    if resume and overwrite:
        raise CurateError("choose one of resume and overwrite")
    _check_output_folder(request, resume, overwrite)
    run = Path(request.run)
    target = target_for_run(run, request.target, [Path(d) for d in request.task_dirs], request.target_limit, request.part_field)
    table = influence_table(run, request.target, request.rule, request.k, [Path(d) for d in request.task_dirs],
                            request.target_limit, request.method, request.seed,
                            request.allocation == "balanced", request.part_field)  # computed here, reused by the stages
    budget.limit(len(table), int(table["tokens"].sum()))  # a budget larger than the pool fails here
    check_allocation(request.allocation, table)
    if not 0.0 <= request.domain_floor <= 1.0:
        raise CurateError(f"domain floor {request.domain_floor} must be between 0 and 1 (a share of the budget per domain)")
    return target


def _check_output_folder(request: SelectionRequest, resume: bool, overwrite: bool) -> None:
    out = Path(request.out)
    if not out.exists() or not any(out.iterdir()):
        if resume:
            raise CurateError(f"nothing to resume in {out}: it is empty or missing; run without resume")
        return
    saved = out / ".work" / "request.json"
    if overwrite:
        if not saved.is_file() and not (out / "manifest.json").is_file():
            raise CurateError(f"{out} holds files that are not a curate selection; refusing to overwrite it")
        return
    if not resume:
        raise CurateError(
            f"{out} already holds a selection; pass --resume to finish an interrupted one with the same settings "
            "or --overwrite to replace it"
        )
    if not saved.is_file():
        raise CurateError(f"{out} is not a curate selection (no .work/request.json): cannot resume it")
    if json.loads(saved.read_text()) != json.loads(json.dumps(request.fingerprint())):
        raise CurateError(f"{out} was made with other settings (see {saved}); use --overwrite or another folder")


def run_selection(request: SelectionRequest, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Check everything, then run the four stages; returns the manifest (local and Ray executors wait for it)."""
    target = check_request(request, resume, overwrite)
    out = Path(request.out)
    if overwrite and out.exists():
        shutil.rmtree(out)
    inputs = RunInputs.load(Path(request.run))
    config = StrideConfig.load(Path(request.run) / "config.yaml")
    readers = pool_readers(inputs.train, config.text_field, config.id_field)
    (out / ".work").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / ".work" / "request.json", json.dumps(request.fingerprint(), indent=2))
    executors = selection_executors(request, selection_pipelines(request, readers, target))
    if request.executor == "ray":
        _ray_init()
    executors[-1].run()  # datatrove runs the chain through `depends`
    manifest = out / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


def _ray_init() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)


__all__ = [
    "SelectionRequest", "run_selection", "check_request", "selection_pipelines", "selection_executors", "pool_readers",
    "influence_table", "prepare_target", "target_for_run", "SELECTION_FILE",
]
