"""Budgets ("20%", "500", "50M-tokens") and the selection of the best documents under one.

A budget is parsed before anything is read or written, and checked against the pool before anything is
written, so a bad budget never leaves a half-made output folder.

The cut is global: documents are ranked by score (ties by id, so a rerun selects the same documents) and
taken from the top until the budget is spent ("greedy" allocation). An optional per-domain floor first reserves,
for every domain, its best documents up to `floor` × the budget (fewer when the domain is smaller), so a selection
cannot collapse onto the one source most similar to the target.

"proportional" allocation spends the budget across groups of documents (a run's recovery groups, see
stride_engine/groups.py) with diminishing returns. Linear influence scores say what one more document is worth
next to the training set the run was fit on, not what the hundredth similar document adds after ninety-nine were
kept; greedy top-k of a linear score fills the budget one group at a time and starves a target's other parts. Here a
group of S documents whose mean score is v > 0 is worth v·S·log(1 + n) for n of them kept, and documents are taken
in order of marginal worth v·S·log((n + 2)/(n + 1)) (each group's best documents first). This maximises the sum
exactly and gives each group a share of the budget in proportion to its total influence v·S: a group that
k-means happened to split in two gets the same budget as the whole would (the shares do not depend on how
finely the documents were grouped). Groups of value ≤ 0 come after all others, by score.

"balanced" allocation is for a target made of parts (benchmark subtasks, the sources of a mixed target: the
target items' `part` field, see curate/core/targets.py). Each part ranks the pool by its own queries' aggregate (the
columns `part_score:<part>`), and the parts take turns: the part that has spent least so far (documents, or tokens
under a token budget) takes its best document not yet taken. Every part gets an equal share of the budget, and a
part whose scores are small or narrow (a target's quiet half) is no longer outvoted by a loud one, as it is in a mean
over all queries. The mean's ranking is what LESS (Xia et al., 2024) replaces with a maximum over subtasks; turns
give the same protection with shares that do not depend on how the parts' score scales compare.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from ..errors import CurateError

ALLOCATIONS = ("greedy", "proportional", "balanced")
PART_SCORE = "part_score:"  # prefix of the per-part score columns "balanced" allocation reads
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


NO_GROUPS = ("proportional allocation spends the budget across the run's recovery groups, and this run has none: "
             "rescore it with groups (`curate fit ... --set groups=16 --overwrite` keeps its operators)")


def check_allocation(allocation: str, table: pl.DataFrame | None = None) -> None:
    """A known allocation, and for "proportional" a table whose documents carry the run's recovery groups."""
    if allocation not in ALLOCATIONS:
        raise CurateError(f"budget allocation {allocation!r} is not one of {list(ALLOCATIONS)}")
    if allocation == "proportional" and table is not None and (
        "group" not in table.columns or table["group"].null_count() == len(table)
    ):
        raise CurateError(NO_GROUPS)
    if allocation == "balanced" and table is not None and not part_columns(table):
        raise CurateError(
            "balanced allocation shares the budget across the target's parts, and this table has no per-part scores: "
            "score the target by part (the scorer's `by_part`; `curate select --allocation balanced` does it)"
        )


def part_columns(table: pl.DataFrame) -> list[str]:
    """The per-part score columns, in the target's order of parts."""
    return [name for name in table.columns if name.startswith(PART_SCORE)]


def select_under_budget(
    table: pl.DataFrame, budget: Budget, domain_floor: float = 0.0, allocation: str = "greedy",
) -> pl.DataFrame:
    """Rank `table` (doc_id, score, tokens, domain; `group` for proportional allocation, `part_score:<part>` columns for
    balanced) and mark what the budget keeps.

    Returns the table sorted by rank with `rank` (1 = taken first), `selected` and `reason` (why a document was kept
    or left out); under balanced allocation also `part`, the part whose turn took the document. With a token budget,
    documents are taken in rank order; one that no longer fits the remaining tokens is passed over for the next that
    does, so the budget is never exceeded.
    """
    if not 0.0 <= domain_floor <= 1.0:
        raise CurateError(f"domain floor {domain_floor} must be between 0 and 1 (a share of the budget per domain)")
    check_allocation(allocation, table)
    if len(table) == 0:
        raise CurateError("the pool is empty: no document to select from")
    duplicated = table["doc_id"].is_duplicated()
    if duplicated.any():
        raise CurateError(f"document id {table['doc_id'].filter(duplicated)[0]!r} occurs more than once in the pool")
    unit, limit = budget.limit(len(table), int(table["tokens"].sum()))
    ranked = table.with_columns(pl.col("domain").fill_null("(none)"))
    if allocation == "greedy":
        ranked = ranked.sort(["score", "doc_id"], descending=[True, False])
    elif allocation == "proportional":
        ranked = _by_marginal_worth(ranked)
    else:
        ranked = _by_turns(ranked, by_tokens=unit == "tokens")
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
    if allocation == "greedy":
        cut = [f"score {score:.4g}; lowest kept {last_kept:.4g}" for score in ranked["score"]]
    elif allocation == "proportional":
        cut = [f"score {score:.4g}, group {group} of value {value:.4g}"
               for score, group, value in zip(ranked["score"], ranked["group"], ranked["group_value"])]
    else:
        cut = [f"part {part}'s turn, its score {score:.4g}" for part, score in zip(ranked["part"], ranked["part_score"])]
    reasons = [
        ("kept: domain floor" if floor else "kept: within budget") if keep
        else f"below the budget cut (rank {rank} of {len(ranked)}, {why})"
        for keep, floor, rank, why in zip(selected, by_floor, ranked["rank"], cut)
    ]
    return ranked.with_columns(selected=pl.Series(selected), reason=pl.Series(reasons, dtype=pl.String))


def _by_marginal_worth(table: pl.DataFrame) -> pl.DataFrame:
    """Documents in the order that maximises sum_g value_g·size_g·log(1 + n_g) (see the module docstring)."""
    ordered = table.with_columns(pl.col("group").fill_null(-1))  # a document without a group is its own kind
    ordered = ordered.with_columns(group_value=pl.col("score").mean().over("group"), group_size=pl.len().over("group"))
    ordered = ordered.sort(["score", "doc_id"], descending=[True, False]).with_columns(
        taken_before=pl.int_range(pl.len()).over("group")
    )
    worth = pl.col("group_value") * pl.col("group_size") * ((pl.col("taken_before") + 2) / (pl.col("taken_before") + 1)).log()
    ordered = ordered.with_columns(
        positive=pl.col("group_value") > 0,
        worth=pl.when(pl.col("group_value") > 0).then(worth).otherwise(pl.col("score")),
    )
    ordered = ordered.sort(["positive", "worth", "score", "doc_id"], descending=[True, True, True, False])
    return ordered.drop("taken_before", "positive", "worth", "group_size")


def _by_turns(table: pl.DataFrame, by_tokens: bool) -> pl.DataFrame:
    """Every document in the order the parts take them in turns (see the module docstring): `part` took it, with
    `part_score`, its score for that part. The part that has spent least goes next; ties go to the earlier part."""
    columns = part_columns(table)
    names = [name[len(PART_SCORE):] for name in columns]
    ids = table["doc_id"].to_numpy()
    orders = [  # each part's ranking: its score, then the id (a rerun takes the same documents)
        np.lexsort((ids, -table[name].fill_null(float("-inf")).to_numpy())) for name in columns
    ]
    cost = table["tokens"].to_numpy() if by_tokens else np.ones(len(table), dtype=np.int64)
    taken = np.zeros(len(table), dtype=bool)
    position = [0] * len(columns)
    spent = np.zeros(len(columns))
    sequence, takers = [], []
    while len(sequence) < len(table):
        turn = int(np.argmin(spent))
        order = orders[turn]
        while taken[order[position[turn]]]:
            position[turn] += 1
        chosen = int(order[position[turn]])
        taken[chosen] = True
        sequence.append(chosen)
        takers.append(turn)
        spent[turn] += max(int(cost[chosen]), 1)  # a document of no tokens still costs its part a turn
    scores = table.select(columns).to_numpy()[sequence, takers]
    return table[sequence].with_columns(
        part=pl.Series([names[t] for t in takers], dtype=pl.String), part_score=pl.Series(scores, dtype=pl.Float64),
    )
