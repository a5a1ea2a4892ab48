"""The score store: sparse, signed attribution scores per query, aggregated from chunks to documents.

Never a dense documents × queries matrix: recovery yields a few queries at a time, and the store keeps
- `top.parquet`: per query, the `top_k` most influential (direction "positive") and least influential
  (direction "negative") documents with non-zero scores, ranked;
- `chunk_scores.parquet`: the recovered non-zero chunk scores (Lasso's support; the top chunks for ridge);
- `documents.parquet`: per-document aggregates streamed over the whole query set, and each document's chunk count
  (`chunks`: 0 for a document too short to make a chunk, which scores 0 everywhere);
- `queries.parquet`: per query, the λ used, the number of non-zeros, the base loss and the spread of its scores.

A query's scores are comparable with each other, not with another query's: their scale follows how far the
operators move that query's loss, noise included. `mean_standardized_score` divides each query's scores by their
standard deviation over the pool before averaging, so that every query has the same say in the aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import polars as pl

from .artifacts import atomic_path
from .errors import StrideError

FILES = ("top.parquet", "chunk_scores.parquet", "documents.parquet", "queries.parquet")
# Aggregates a store written by an older version may lack; Stride.recover rewrites such a store from its responses.
DOCUMENT_COLUMNS = ("mean_score", "mean_standardized_score", "positive_mass", "negative_mass", "nonzero_queries")
# Written since, but no reason to rewrite an older store: `chunks` (chunks per document; 0: never measured, score 0).


def chunk_to_document(scores: np.ndarray, doc_index: np.ndarray, num_docs: int, rule: str) -> np.ndarray:
    """(b, n_chunks) -> (b, n_docs). "max": the chunk score largest in magnitude, with its sign; "sum": the sum.

    A document without chunks (too short to predict a token) scores 0 under both: nothing of it was trained on.
    """
    out = np.zeros((scores.shape[0], num_docs), dtype=np.float64)
    if rule == "sum":
        for row, values in enumerate(scores):
            np.add.at(out[row], doc_index, values)
        return out
    # Starting from 0 instead of ∓inf changes no document with chunks (its largest |score| is its maximum when
    # positive, its minimum when negative) and gives one without chunks 0, not −inf.
    highest = np.zeros_like(out)
    lowest = np.zeros_like(out)
    for row, values in enumerate(scores):
        np.maximum.at(highest[row], doc_index, values)
        np.minimum.at(lowest[row], doc_index, values)
    return np.where(np.abs(lowest) > np.abs(highest), lowest, highest)


# A score part (one worker's share of a query set; Stride.attribute_part) keeps its per-document sums instead of the
# store's means, so that parts add up: merge_score_parts divides by the whole set's query count.
PART_FILES = ("top.parquet", "chunk_scores.parquet", "queries.parquet", "document_sums.parquet")
SUM_COLUMNS = ("score_sum", "standardized_sum", "positive_mass", "negative_mass", "nonzero_queries")


def write_scores(
    folder: Path | str,
    batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    query_ids: list[str],
    base_losses: np.ndarray,
    doc_ids: list[str],
    doc_domains: list[str | None],
    doc_index: np.ndarray,
    aggregate: str,
    top_k: int,
    keep_all_nonzeros: bool,
) -> "ScoreStore":
    """Consume recovery batches (query indices, chunk scores, λ) and write the store atomically."""
    tally = _tally(batches, query_ids, base_losses, len(doc_ids), doc_index, aggregate, top_k, keep_all_nonzeros)
    return _write_store(folder, tally, doc_ids, doc_domains, doc_index)


def write_score_part(
    folder: Path | str,
    batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    query_ids: list[str],
    base_losses: np.ndarray,
    num_docs: int,
    doc_index: np.ndarray,
    aggregate: str,
    top_k: int,
    keep_all_nonzeros: bool,
) -> None:
    """Like write_scores, for one share of a query set: its rows, and per-document sums (PART_FILES), atomically."""
    tally = _tally(batches, query_ids, base_losses, num_docs, doc_index, aggregate, top_k, keep_all_nonzeros)
    with atomic_path(Path(folder)) as tmp:
        tmp.mkdir(parents=True)
        _write_rows(tmp, tally)
        pl.DataFrame(tally.sums).write_parquet(tmp / "document_sums.parquet")


def merge_score_parts(
    folder: Path | str, parts: list[Path], doc_ids: list[str], doc_domains: list[str | None], doc_index: np.ndarray,
) -> "ScoreStore":
    """One score store from the parts of a query set, in the order given (the queries' order)."""
    missing = [str(part) for part in parts if not all((Path(part) / name).is_file() for name in PART_FILES)]
    if missing:
        raise StrideError(f"score parts are missing or unfinished: {', '.join(missing)}")
    sums = {column: np.zeros(len(doc_ids), dtype=np.int64 if column == "nonzero_queries" else np.float64) for column in SUM_COLUMNS}
    for part in parts:
        part_sums = pl.read_parquet(Path(part) / "document_sums.parquet")
        if len(part_sums) != len(doc_ids):
            raise StrideError(f"score part {part} has {len(part_sums)} documents, the run has {len(doc_ids)}: it was "
                              "written for another corpus; remove it and rerun its worker")
        for column in SUM_COLUMNS:
            sums[column] += part_sums[column].to_numpy()
    tally = _Tally(
        top=pl.concat([pl.read_parquet(Path(part) / "top.parquet") for part in parts]),
        chunks=pl.concat([pl.read_parquet(Path(part) / "chunk_scores.parquet") for part in parts]),
        queries=pl.concat([pl.read_parquet(Path(part) / "queries.parquet") for part in parts]),
        sums=sums,
    )
    duplicated = tally.queries["query_id"].is_duplicated()
    if duplicated.any():
        raise StrideError(f"score parts overlap: query {tally.queries.filter(duplicated)['query_id'][0]!r} is in two of them")
    return _write_store(folder, tally, doc_ids, doc_domains, doc_index)


@dataclass(frozen=True)
class _Tally:
    """What one pass over recovery batches leaves: rows per query, and sums per document (SUM_COLUMNS)."""

    top: pl.DataFrame
    chunks: pl.DataFrame
    queries: pl.DataFrame
    sums: dict[str, np.ndarray]


_QUERY_SCHEMA = {"query_id": pl.String, "lambda": pl.Float64, "base_loss": pl.Float64, "nonzero_chunks": pl.Int64,
                 "nonzero_documents": pl.Int64, "score_std": pl.Float64}


def _tally(batches, query_ids: list[str], base_losses: np.ndarray, num_docs: int, doc_index: np.ndarray, aggregate: str,
           top_k: int, keep_all_nonzeros: bool) -> _Tally:
    top_rows, chunk_rows, query_rows = [_ranked("", np.zeros(0), 0)], [_chunk_entries("", np.zeros(0), 0, True)], []
    doc_sum = np.zeros(num_docs)
    doc_standardized = np.zeros(num_docs)
    doc_positive = np.zeros(num_docs)
    doc_negative = np.zeros(num_docs)
    doc_nonzero = np.zeros(num_docs, dtype=np.int64)
    for indices, chunk_scores, lambdas in batches:
        doc_scores = chunk_to_document(chunk_scores, doc_index, num_docs, aggregate)
        doc_sum += doc_scores.sum(axis=0)
        doc_positive += np.clip(doc_scores, 0, None).sum(axis=0)
        doc_negative += np.clip(doc_scores, None, 0).sum(axis=0)
        doc_nonzero += (doc_scores != 0).sum(axis=0)
        spread = doc_scores.std(axis=1)
        doc_standardized += (doc_scores[spread > 0] / spread[spread > 0, None]).sum(axis=0)  # an all-zero query adds nothing
        for row, query in enumerate(indices):
            qid = query_ids[query]
            top_rows.append(_ranked(qid, doc_scores[row], top_k))
            chunk_rows.append(_chunk_entries(qid, chunk_scores[row], top_k, keep_all_nonzeros))
            query_rows.append({
                "query_id": qid, "lambda": float(lambdas[row]), "base_loss": float(base_losses[query]),
                "nonzero_chunks": int(np.count_nonzero(chunk_scores[row])),
                "nonzero_documents": int(np.count_nonzero(doc_scores[row])),
                "score_std": float(spread[row]),
            })
    sums = dict(zip(SUM_COLUMNS, (doc_sum, doc_standardized, doc_positive, doc_negative, doc_nonzero)))
    return _Tally(pl.concat(top_rows), pl.concat(chunk_rows), pl.DataFrame(query_rows, schema=_QUERY_SCHEMA), sums)


def _write_store(folder: Path | str, tally: _Tally, doc_ids: list[str], doc_domains: list[str | None],
                 doc_index: np.ndarray) -> "ScoreStore":
    num_queries = max(1, len(tally.queries))
    sums = tally.sums
    documents = pl.DataFrame({
        "doc_id": doc_ids,
        "domain": doc_domains,
        "mean_score": sums["score_sum"] / num_queries,
        "mean_standardized_score": sums["standardized_sum"] / num_queries,
        "positive_mass": sums["positive_mass"],
        "negative_mass": sums["negative_mass"],
        "nonzero_queries": sums["nonzero_queries"],
        "chunks": np.bincount(doc_index, minlength=len(doc_ids)).astype(np.int64),
    })
    with atomic_path(Path(folder)) as tmp:
        tmp.mkdir(parents=True)
        _write_rows(tmp, tally)
        documents.write_parquet(tmp / "documents.parquet")
    return ScoreStore(Path(folder))


def _write_rows(folder: Path, tally: _Tally) -> None:
    """The per-query files a store and a part both hold."""
    tally.top.write_parquet(folder / "top.parquet")
    tally.chunks.write_parquet(folder / "chunk_scores.parquet")
    tally.queries.write_parquet(folder / "queries.parquet")


_TOP_SCHEMA = {"query_id": pl.String, "direction": pl.String, "rank": pl.Int64, "doc_index": pl.Int64, "score": pl.Float64}


def _ranked(query_id: str, doc_scores: np.ndarray, top_k: int) -> pl.DataFrame:
    parts = []
    for direction, sign in (("positive", 1.0), ("negative", -1.0)):
        candidates = np.flatnonzero(sign * doc_scores > 0)
        order = candidates[np.argsort(-sign * doc_scores[candidates], kind="stable")][:top_k]
        parts.append(pl.DataFrame({
            "query_id": [query_id] * len(order), "direction": [direction] * len(order),
            "rank": np.arange(1, len(order) + 1), "doc_index": order, "score": doc_scores[order],
        }, schema=_TOP_SCHEMA))
    return pl.concat(parts)


def _chunk_entries(query_id: str, scores: np.ndarray, top_k: int, keep_all: bool) -> pl.DataFrame:
    nonzero = np.flatnonzero(scores)
    if not keep_all and len(nonzero) > 2 * top_k:
        nonzero = np.argsort(-np.abs(scores))[: 2 * top_k]
    return pl.DataFrame(
        {"query_id": [query_id] * len(nonzero), "chunk_id": nonzero.astype(np.int64), "score": scores[nonzero].astype(np.float64)},
        schema={"query_id": pl.String, "chunk_id": pl.Int64, "score": pl.Float64},
    )


@dataclass(frozen=True)
class ScoreStore:
    """Read access to a written score store (one query set of one run)."""

    folder: Path  # a str is accepted and made a Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))  # frozen: set once, here
        missing = [name for name in FILES if not (self.folder / name).is_file()]
        if missing:
            raise StrideError(f"{self.folder} is not a finished score store (missing {', '.join(missing)})")

    def documents(self) -> pl.DataFrame:
        return pl.read_parquet(self.folder / "documents.parquet")

    def is_current(self) -> bool:
        """Whether the store has every per-document aggregate this version writes."""
        return set(DOCUMENT_COLUMNS) <= set(pl.read_parquet_schema(self.folder / "documents.parquet"))

    def queries(self) -> pl.DataFrame:
        return pl.read_parquet(self.folder / "queries.parquet")

    def chunk_scores(self) -> pl.DataFrame:
        return pl.read_parquet(self.folder / "chunk_scores.parquet")

    def top(self, query_id: str | None = None, k: int = 10, direction: str = "positive") -> pl.DataFrame:
        """The k most (direction "positive") or least ("negative") influential documents per query, with doc ids."""
        if direction not in ("positive", "negative"):
            raise StrideError(f"direction must be 'positive' or 'negative', got {direction!r}")
        table = pl.scan_parquet(self.folder / "top.parquet").filter(
            (pl.col("direction") == direction) & (pl.col("rank") <= k)
        )
        if query_id is not None:
            known = self.queries()["query_id"]
            if query_id not in known:
                raise StrideError(f"query {query_id!r} is not in {self.folder} (it has {len(known)} queries, e.g. {known[0]!r})")
            table = table.filter(pl.col("query_id") == query_id)
        documents = self.documents().with_row_index("doc_index").select(
            pl.col("doc_index").cast(pl.Int64), "doc_id", "domain"
        )
        return table.collect().join(documents, on="doc_index", how="left").sort("query_id", "rank", maintain_order=True)

    def iter_queries(self) -> Iterator[str]:
        yield from self.queries()["query_id"]
