"""How many target items does a selection need? Measured on the selection study's run, without any proxy.

    python -m benchmarks.target_size runs/select_pretraining_mix     # after `curate recipe ...yaml`; ~5 min

STRIDE's per-query attributions are noisy (pre-training LDS about 0.2), and a selection ranks the pool by their
mean over the target's queries, so the noise shrinks with the number of items. For query sets whose source is
known (the recipe's held-out items of every domain, 60 each, and targets named with --target NAME=SOURCE: by
default the math target's 100 GSM8K test problems), it draws k items at random (30 draws per k), ranks the pool
by the mean of their scores (a long item's windows all count) and reports how much of the top 1/30 and top 1/10
of the pool (87 and 260 documents of 2,600) comes from the items' own source: a part's share of a 10% and a 30%
budget under balanced allocation with three parts, as in the mixed target. STRIDE's scores are the run's
grouped recovery, one query at a time; BM25's are `curate.similarity`'s (each item's scores over the pool
divided by their best). Writes benchmarks/results/target_size.{md,json}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl

from curate.core.run import Run
from curate.select import prepare_target
from curate.core.baselines import bm25_item_scores
from curate.core.targets import Target
from curate.studies.notes import keep_notes
from stride_engine import Stride
from stride_engine.artifacts import atomic_write_text
from stride_engine.design import Membership
from stride_engine.recovery import recover
from stride_engine.scores import chunk_to_document

from .runner import commit
from .selection_diagnostics import latest_run

OUT = Path(__file__).parent / "results" / "target_size.md"
SIZES = (5, 10, 20, 40, 60, 100)
DRAWS = 30
TOP_FRACTIONS = (0.1 / 3, 0.3 / 3)  # a part's share of a 10% and a 30% budget, three parts taking turns


def query_sets(study: Path, targets: dict[str, str]) -> dict[str, tuple[Path, str]]:
    """label -> (items file, the items' own source in the pool): the named targets, then each domain's held-out items."""
    data = study / "data"
    sets = {f"target {name}": (data / f"target-{name}.jsonl", source) for name, source in targets.items()}
    for path in sorted(data.glob("heldout-*.jsonl")):
        domain = path.stem.removeprefix("heldout-")
        sets[f"held-out {domain}"] = (path, domain)
    return sets


def stride_query_scores(stride: Stride, run_dir: Path, target: Target) -> np.ndarray:
    """(queries x documents) scores: the run's recovery, one query at a time, chunk to document as the run
    aggregates. The responses are the ones `curate select` computed for the target (prepare_target)."""
    responses = stride.responses(target.queries, name=target.name)
    membership = Membership.load(run_dir / "design.npz").matrix
    doc_index = pl.read_parquet(run_dir / "chunks.parquet")["doc_index"].to_numpy()  # an index into the pool's documents
    documents = int(doc_index.max()) + 1
    scores = np.zeros((len(responses), documents))
    for rows, chunk_scores, _ in recover(membership, responses, stride.recovery_settings(), groups=stride.groups()):
        scores[rows] = chunk_to_document(chunk_scores, doc_index, documents, stride.config.aggregate)
    return scores


def own_share(scores: np.ndarray, item_of_query: np.ndarray, picked: np.ndarray, own: np.ndarray, tops: list[int]) -> list[int]:
    ranking = np.argsort(-scores[np.isin(item_of_query, picked)].mean(axis=0), kind="stable")
    return [int(own[ranking[:top]].sum()) for top in tops]


def main(study: Path, targets: dict[str, str] | None = None, out: Path = OUT) -> Path:
    targets = {"math": "math"} if targets is None else targets
    made_at = commit()  # before this writes anything: the tree it ran from
    run_dir = latest_run(study)
    run = Run(run_dir)
    stride = run.engine
    pool = run.documents
    domain = np.asarray(pool.domains)  # in the run's document order (the chunks' doc_index)
    tops = [max(1, round(len(pool.ids) * fraction)) for fraction in TOP_FRACTIONS]
    sets = query_sets(study, targets)

    rng = np.random.default_rng(0)
    rows = []
    for label, (path, source) in sets.items():
        _, target = prepare_target(run, str(path), [])  # the target's responses, computed once in the run
        stride_scores = stride_query_scores(stride, run_dir, target)
        bm25 = bm25_item_scores(list(pool.texts), [p + c for p, c in zip(target.queries.prompts, target.queries.completions)])
        item_of_query = np.array([q.rsplit("#", 1)[0] for q in target.queries.ids])  # a window's id: <item>#<n>
        items = np.unique(item_of_query)
        own = domain == source
        for size in [s for s in SIZES if s < len(items)] + [len(items)]:
            draws = [rng.choice(items, size, replace=False) for _ in range(DRAWS if size < len(items) else 1)]
            for method, scores in (("stride", stride_scores), ("bm25", bm25)):
                shares = np.array([own_share(scores, item_of_query, picked, own, tops) for picked in draws])
                rows.append({"query_set": label, "source": source, "items": size, "draws": len(draws), "method": method,
                             "tops": tops, "own_mean": shares.mean(axis=0).tolist(), "own_std": shares.std(axis=0).tolist(),
                             "random_expected": [float(own.mean() * top) for top in tops]})
    atomic_write_text(out.with_suffix(".json"), json.dumps({"run": run_dir.name, "commit": made_at, "rows": rows}, indent=1))

    share = {(r["query_set"], r["items"], r["method"]): r for r in rows}
    lines = [
        "# How many target items does a selection need?",
        "",
        f"Made by `python -m benchmarks.target_size {study}` at commit {made_at}; run `{run_dir.name}` "
        f"({len(pool.ids)} pool documents). For k items drawn at random ({DRAWS} draws; one when k is all of them), "
        f"the pool is ranked by the mean of their scores; the cells are how many of the top {tops[0]} / top {tops[1]} "
        f"documents come from the items' own source (mean ± sd over draws). {tops[0]} and {tops[1]} are a part's share of a "
        "10% and a 30% budget under balanced allocation with three parts. No proxy is trained: this reads the scores only.",
        "",
        "## Results",  # the hand-written notes (curate.studies.notes) go before it
        "",
        f"| query set | items | STRIDE top {tops[0]} | STRIDE top {tops[1]} | BM25 top {tops[0]} | BM25 top {tops[1]} | "
        f"random top {tops[0]} / {tops[1]} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (label, size, method), row in share.items():
        if method != "stride":
            continue
        cells = [f"{m:.0f} ± {s:.0f}" for r in (row, share[(label, size, "bm25")]) for m, s in zip(r["own_mean"], r["own_std"])]
        expected = " / ".join(f"{e:.0f}" for e in row["random_expected"])
        lines.append(f"| {label} | {size} | {' | '.join(cells)} | {expected} |")
    atomic_write_text(out, keep_notes(out, "\n".join(lines) + "\n", made_at))  # the notes of the file stay
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, nargs="?", default=Path("runs/select_pretraining_mix"))
    parser.add_argument("--target", action="append", default=None, metavar="NAME=SOURCE",
                        help="a target of the study whose items come from one pool source (default: math=math)")
    args = parser.parse_args()
    named = None if args.target is None else dict(value.split("=", 1) for value in args.target)
    print(main(args.study, named))
