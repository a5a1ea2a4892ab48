"""Budgets ("20%", "500", "50M-tokens") and the selection of the best documents under one.

A budget is parsed before anything is read or written, and checked against the pool before anything is
written, so a bad budget never leaves a half-made output folder.

The cut is global: documents are ranked by score (ties by id, so a rerun selects the same documents) and
taken from the top until the budget is spent. An optional per-domain floor first reserves, for every domain,
its best documents up to `floor` × the budget (fewer when the domain is smaller), so a selection cannot collapse
onto the one source most similar to the target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from .errors import CurateError

_SCALE = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}
_FRACTION = re.compile(r"^\s*(?P<number>[+-]?\d+(?:\.\d+)?)\s*%\s*$")
_COUNT = re.compile(r"^\s*(?P<number>[+-]?\d+(?:\.\d+)?)\s*(?P<scale>[kmb]?)\s*-?\s*(?P<unit>tokens?|docs?|documents?|)\s*$", re.I)


@dataclass(frozen=True)
class Budget:
    kind: str  # "fraction" (of the pool's documents) | "documents" | "tokens"
    value: float
    text: str  # as the user wrote it, for the manifest

    def limit(self, num_documents: int, num_tokens: int) -> tuple[str, int]:
        """("documents" | "tokens", how many) for this pool; an error when the pool cannot hold the budget."""
        if self.kind == "fraction":
            count = int(round(self.value * num_documents))
            if count < 1:
                raise CurateError(f"budget {self.text!r} keeps no document of a pool of {num_documents}; raise it")
            return "documents", count
        if self.kind == "documents":
            if self.value > num_documents:
                raise CurateError(f"budget {self.text!r} is larger than the pool ({num_documents} documents)")
            return "documents", int(self.value)
        if self.value > num_tokens:
            raise CurateError(f"budget {self.text!r} is larger than the pool ({num_tokens} tokens)")
        return "tokens", int(self.value)


def parse_budget(text: str) -> Budget:
    """'20%' (fraction of documents), '500' or '500-docs' (documents), '50M-tokens' or '2000tokens' (tokens)."""
    fraction, count = _FRACTION.match(str(text)), _COUNT.match(str(text))
    if not (fraction or count):
        raise CurateError(
            f"budget {text!r} is not understood; write a fraction ('20%'), a document count ('500') "
            "or a token count ('50M-tokens')"
        )
    number = float((fraction or count)["number"])
    if number <= 0:
        raise CurateError(f"budget {text!r} must be positive")
    if fraction:
        if number > 100:
            raise CurateError(f"budget {text!r} is more than the whole pool (100%)")
        return Budget("fraction", number / 100, str(text))
    value = number * _SCALE[count["scale"].lower()]
    if value != int(value):
        raise CurateError(f"budget {text!r} is not a whole number of documents or tokens")
    kind = "tokens" if count["unit"].lower().startswith("token") else "documents"
    return Budget(kind, float(int(value)), str(text))


def select_under_budget(table: pl.DataFrame, budget: Budget, domain_floor: float = 0.0) -> pl.DataFrame:
    """Rank `table` (doc_id, score, tokens, domain) and mark what the budget keeps.

    Returns the table sorted by rank with `rank` (1 = best), `selected` and `reason` (why a document was kept or
    left out). With a token budget, documents are taken in rank order; one that no longer fits the remaining
    tokens is passed over for the next that does, so the budget is never exceeded.
    """
    if not 0.0 <= domain_floor <= 1.0:
        raise CurateError(f"domain floor {domain_floor} must be between 0 and 1 (a share of the budget per domain)")
    if len(table) == 0:
        raise CurateError("the pool is empty: no document to select from")
    duplicated = table["doc_id"].is_duplicated()
    if duplicated.any():
        raise CurateError(f"document id {table['doc_id'].filter(duplicated)[0]!r} occurs more than once in the pool")
    unit, limit = budget.limit(len(table), int(table["tokens"].sum()))
    ranked = table.with_columns(pl.col("domain").fill_null("(none)")).sort(["score", "doc_id"], descending=[True, False])
    ranked = ranked.with_columns(rank=pl.int_range(1, len(ranked) + 1, dtype=pl.Int64))
    cost = ranked["tokens"].to_numpy() if unit == "tokens" else np.ones(len(ranked), dtype=np.int64)
    domains = ranked["domain"].to_numpy()

    selected = np.zeros(len(ranked), dtype=bool)
    by_floor = np.zeros(len(ranked), dtype=bool)
    spent = 0
    if domain_floor > 0:
        for domain in dict.fromkeys(domains):  # each domain's best documents, up to its floor
            reserve, used = domain_floor * limit, 0
            for i in np.flatnonzero(domains == domain):
                if used + cost[i] > reserve or spent + cost[i] > limit:
                    break
                selected[i] = by_floor[i] = True
                used += cost[i]
                spent += cost[i]
    for i in range(len(ranked)):  # then the best of the rest, globally, while they fit
        if selected[i]:
            continue
        if spent + cost[i] > limit:
            if unit == "documents":
                break
            continue  # a shorter document further down may still fit the remaining tokens
        selected[i] = True
        spent += cost[i]

    last_kept = ranked["score"].to_numpy()[selected].min()
    reasons = [
        ("kept: domain floor" if floor else "kept: within budget") if keep
        else f"below the budget cut (rank {rank} of {len(ranked)}, score {score:.4g}; lowest kept {last_kept:.4g})"
        for keep, floor, rank, score in zip(selected, by_floor, ranked["rank"], ranked["score"])
    ]
    return ranked.with_columns(selected=pl.Series(selected), reason=pl.Series(reasons, dtype=pl.String))
