"""Each pool document's influence on a target: STRIDE's (from the run's score stores) or a baseline's.

`influence_table` is what the applications read (selection's scorer, reweighting's per-domain influence): doc_id,
domain, influence, tokens, group (the run's recovery group; null without) for every pool document, and with `by_part` each part of the target's own scores
(`part_score:<part>`, for balanced allocation). It is computed once per run and target (score stores and baseline
tables are kept in the run) and read again by every task.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from stride_engine import ScoreStore

from .baselines import pool_scores
from .budget import PART_SCORE
from .run import Run, document_influence
from .targets import Target, part_sets, target_for_run


def prepare_target(run: Run | str | Path, spec: str, task_dirs: list[Path], limit: int | None = None) -> tuple[ScoreStore, Target]:
    """The target's score store in the run, computed once (whichever process gets the lock first)."""
    run = run if isinstance(run, Run) else Run(run)
    target = target_for_run(run, spec, task_dirs, limit)
    return run.score_store(target.name, target.queries), target


def prepare_parts(run: Run | str | Path, spec: str, task_dirs: list[Path], limit: int | None = None,
                  part_field: str = "part") -> tuple[dict[str, ScoreStore], Target]:
    """One score store per part of the target (its own queries), computed once; a target of one part has its
    whole store. Each query's scores are recovered alone, so a part's are the same as in the whole target's store."""
    run = run if isinstance(run, Run) else Run(run)
    target = target_for_run(run, spec, task_dirs, limit, part_field)
    return {label: run.score_store(name, queries) for label, (name, queries) in part_sets(target).items()}, target


def influence_table(
    run: Run | str | Path, spec: str, rule: str, k: int, task_dirs: list[Path], limit: int | None = None,
    method: str = "stride", seed: int = 0, by_part: bool = False, part_field: str = "part",
) -> pl.DataFrame:
    """doc_id, domain, influence, tokens, group for every pool document (see the module docstring)."""
    run = run if isinstance(run, Run) else Run(run)
    if by_part:
        influence = _influence_by_part(run, spec, rule, k, task_dirs, limit, method, seed, part_field)
    elif method == "stride":
        store, _ = prepare_target(run, spec, task_dirs, limit)
        influence = document_influence(store, rule, k)
    else:
        target = target_for_run(run, spec, task_dirs, limit)
        influence = pool_scores(run, target.name, target.queries, method, seed)
    table = influence.join(run.document_tokens(), on="doc_id", how="left").with_columns(pl.col("tokens").fill_null(0))
    groups = run.document_groups()
    if groups is None:
        return table.with_columns(group=pl.lit(None, dtype=pl.Int64))
    return table.join(groups, on="doc_id", how="left")


def _influence_by_part(run: Run, spec: str, rule: str, k: int, task_dirs: list[Path], limit: int | None,
                       method: str, seed: int, part_field: str) -> pl.DataFrame:
    """The whole target's influence and every part's. For STRIDE the whole is the parts' aggregates put together
    (the mean over all queries is the parts' means weighted by their sizes; hits add up), so no query is scored twice;
    a baseline scores the whole target and each part on its own."""
    if method == "stride":
        stores, target = prepare_parts(run, spec, task_dirs, limit, part_field)
        per_part = {label: document_influence(store, rule, k) for label, store in stores.items()}
        sizes = {label: len(queries) for label, queries in target.part_queries().items()}
        weight = {label: 1.0 if rule == "topk-hits" else size / sum(sizes.values()) for label, size in sizes.items()}
        whole = pl.sum_horizontal(pl.col(PART_SCORE + label) * weight[label] for label in per_part).alias("influence")
    else:
        target = target_for_run(run, spec, task_dirs, limit, part_field)
        per_part = {label: pool_scores(run, name, queries, method, seed) for label, (name, queries) in part_sets(target).items()}
        whole = None
    table = next(iter(per_part.values())).select("doc_id", "domain")
    for label, frame in per_part.items():
        table = table.join(frame.select("doc_id", pl.col("influence").alias(PART_SCORE + label)), on="doc_id", how="left")
    if whole is None:  # a baseline's own score of the whole target (the target was loaded once, above)
        overall = pool_scores(run, target.name, target.queries, method, seed)
        table = table.join(overall.select("doc_id", "influence"), on="doc_id", how="left")
    else:
        table = table.with_columns(whole)
    return table.select("doc_id", "domain", "influence", pl.col(f"^{PART_SCORE}.*$"))
