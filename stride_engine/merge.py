"""Merging a query set's parts into its responses and score store, without the model.

Workers that share no process group (datatrove tasks, separate jobs) each measure and recover a share of a query
set (`Stride.attribute_part`); one task then merges the shares. Merging reads parquet and numpy files only, so it
should not need what measuring needed: loading an 8 B model and re-checking the corpus just to concatenate tables
would make the merge the slowest task of the job. Each part records what it was computed from (the scores stage's
fingerprint, the digest of its token batch, a digest of the query texts), the run records its operators, its
configuration and its document list, and from those the merge rebuilds the stages a worker would have checked.
A run or a part written before these records existed gives None, and the caller reopens the engine instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl

from .artifacts import RunDirectory, Stage, atomic_path, remove_path
from .config import StrideConfig, stage_fields
from .corpus import Queries
from .errors import StrideError
from .fusion import merge_peer_parts
from .scores import ScoreStore, merge_score_parts

log = logging.getLogger(__name__)

DOCUMENT_LIST = "documents.parquet"  # every training document's id and domain, in the run's order (chunkless ones too)


def part_folder(run: RunDirectory, name: str, part: int, parts: int) -> Path:
    return run.path("parts", name, f"{part:05d}-of-{parts:05d}")


def queries_digest(ids: list[str], queries: Queries | None) -> str:
    """A digest of the query set as the user gave it (ids, prompts, completions), computable without a tokenizer."""
    digest = hashlib.sha256()
    for i, query_id in enumerate(ids):
        prompt, completion = (queries.prompts[i], queries.completions[i]) if queries is not None else ("", "")
        digest.update(f"{query_id}\0{prompt}\0{completion}\1".encode())
    return digest.hexdigest()[:16]


def write_document_list(run: RunDirectory, doc_ids: list[str], domains: list[str | None]) -> None:
    with atomic_path(run.path(DOCUMENT_LIST)) as tmp:
        pl.DataFrame({"doc_id": doc_ids, "domain": domains}, schema={"doc_id": pl.String, "domain": pl.String}).write_parquet(tmp)


def responses_stage(name: str, config: StrideConfig, operators: str, batch_digest: str) -> Stage:
    return Stage(f"responses-{name}", {"operators": operators, "queries": batch_digest, **stage_fields(config, "responses")})


def scores_stage(name: str, config: StrideConfig, responses_fingerprint: str) -> Stage:
    return Stage(f"scores-{name}", {**stage_fields(config, "scores"), "responses": responses_fingerprint})


def write_responses(run: RunDirectory, stage: Stage, name: str, values: np.ndarray, base: np.ndarray,
                    query_ids: list[str]) -> None:
    """A query set's responses and base measurements, and last their stage's record."""
    with atomic_path(run.path("responses", f"{name}.npy")) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, values)
    with atomic_path(run.path("responses", f"{name}.queries.parquet")) as tmp:
        pl.DataFrame({"query_id": query_ids, "base_loss": base}).write_parquet(tmp)
    run.finish(stage, queries=len(query_ids), operators=values.shape[1])


def finish_scores(run: RunDirectory, stage: Stage, store: ScoreStore, lambda_rule: str, parts: int = 1) -> ScoreStore:
    """Record a written score store as its stage, warning about queries that got no score."""
    queries = store.queries()
    unscored = int((queries["nonzero_chunks"] == 0).sum())
    if unscored:  # a user would otherwise read "no influential example" for them
        log.warning("%d of %d queries got no score: their responses do not tell the subsets apart (the model may "
                    "already predict them with certainty; measurement='log-odds' does not saturate%s)", unscored,
                    len(queries), "" if lambda_rule == "fixed" else "; with lambda_rule='cv' a query "
                    "gets none when no fit predicts held-out subsets better than its mean")
    run.finish(stage, queries=len(queries), queries_without_scores=unscored, parts=parts)
    return store


def merge_without_model(run_dir: Path | str, queries: Queries, name: str, parts: int) -> ScoreStore | None:
    """The query set's responses and score store from its `parts` finished parts, read from the run's own records
    (the same files `Stride.merge_parts` writes); None when the run or a part predates those records."""
    run = RunDirectory(Path(run_dir))
    run.check_format()
    operators = run.record("operators")
    if operators is None or not run.path("config.yaml").is_file() or not run.path(DOCUMENT_LIST).is_file():
        return None
    config = StrideConfig.load(run.path("config.yaml"))
    folders = [part_folder(run, name, part, parts) for part in range(parts)]
    records = [json.loads((f / "part.json").read_text()) if (f / "part.json").is_file() else None for f in folders]
    if all(r is None for r in records) or any(r is not None and "queries" not in r for r in records):
        # no part left (a merged set's parts are removed: the engine tells a finished store from a missing one) or
        # a part written before parts recorded their token batch
        return None
    text = queries_digest(list(queries.ids), queries)
    batches = {r["queries"] for r in records if r is not None}
    if len(batches) > 1:
        raise StrideError(f"the parts of query set {name!r} were measured on different queries: rerun them on one set")
    responses = responses_stage(name, config, operators["fingerprint"], batches.pop())
    scores = scores_stage(name, config, responses.fingerprint)
    folder = run.path("scores", name)
    if run.is_done(scores) and ScoreStore(folder).is_current():
        return ScoreStore(folder)
    unfinished = [f.name for f, r in zip(folders, records)
                  if r is None or r["scores"] != scores.fingerprint or r.get("queries_text") != text]
    if unfinished:
        raise StrideError(f"{len(unfinished)} of the {parts} parts of query set {name!r} are not finished "
                          f"({', '.join(unfinished[:5])}): run attribute_part for them first")
    run.is_done(responses)  # a set measured before under other inputs is refused here, as the workers refuse it
    run.is_done(scores)
    rows = [tuple(r["rows"]) for r in records]
    if rows[0][0] != 0 or rows[-1][1] != len(queries) or any(a[1] != b[0] for a, b in zip(rows, rows[1:])):
        raise StrideError(f"the parts of query set {name!r} cover rows {rows}, not the {len(queries)} queries in order")
    if not run.record(responses.name):
        values = np.concatenate([np.load(f / "responses.npy") for f in folders])
        base = np.concatenate([pl.read_parquet(f / "scores" / "queries.parquet")["base_loss"].to_numpy() for f in folders])
        write_responses(run, responses, name, values, base, list(queries.ids))
    merge_peer_parts(run, config, name, operators["fingerprint"], responses.inputs["queries"], folders)
    documents = pl.read_parquet(run.path(DOCUMENT_LIST))
    doc_index = pl.read_parquet(run.path("chunks.parquet"), columns=["doc_index"])["doc_index"].to_numpy().astype(np.int64)
    store = merge_score_parts(folder, [f / "scores" for f in folders], documents["doc_id"].to_list(),
                              documents["domain"].to_list(), doc_index)
    store = finish_scores(run, scores, store, config.lambda_rule, parts=parts)
    remove_path(run.path("parts", name))
    return store
