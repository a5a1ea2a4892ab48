"""The embedded demo end to end: corpus -> demo model -> STRIDE attribution -> what it found.

Needs no download and no `../shared`: the corpus is generated, the tokenizer and model are trained here.
The planted facts give ground truth, so the demo can say how often attribution found the planted documents.
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass
from math import comb
from pathlib import Path

import click
import polars as pl

from stride_engine import ScoreStore, Stride, StrideConfig, read_documents, read_queries

from ..core.run import RunInputs
from .model import build_demo_assets


@dataclass(frozen=True)
class PlantedRecovery:
    """How often a planted document ranks among the top k of all documents for its query."""

    k: int
    hit_rate: float  # fraction of queries with at least one planted document in the top k
    random_hit_rate: float  # the same for a uniformly random ranking
    queries: int


def planted_recovery(store: ScoreStore, queries: list[dict], num_documents: int, k: int = 10) -> PlantedRecovery:
    top = store.top(k=k, direction="positive").select("query_id", "doc_id")
    found = top.group_by("query_id").agg(pl.col("doc_id"))
    ranked = dict(zip(found["query_id"], found["doc_id"]))
    hits, random_hits = 0, 0.0
    for query in queries:
        planted = set(query["planted_doc_ids"])
        hits += bool(planted & set(ranked.get(query["id"], [])))
        random_hits += 1 - comb(num_documents - len(planted), k) / comb(num_documents, k)
    return PlantedRecovery(k, hits / len(queries), random_hits / len(queries), len(queries))


def run_demo(out_dir: Path, config: StrideConfig, show: int = 4, quick: bool = False, progress: bool = True) -> PlantedRecovery:
    out_dir = Path(out_dir)
    started = time.perf_counter()
    click.echo("1/3 demo corpus and model (reused when already built)")
    assets = build_demo_assets(out_dir / "assets", quick=quick, progress=progress)
    built = time.perf_counter()

    documents = read_documents([assets.corpus_path])
    queries = read_queries(assets.queries_path)
    click.echo(f"2/3 STRIDE on {len(documents)} documents, {len(queries)} planted-fact queries "
               f"(K={config.num_subsets}, d={config.subsets_per_example}, rank {config.rank}, {config.steps} steps)")
    run_dir = out_dir / "run"
    stride = Stride.from_pretrained(assets.model_dir, config, run_dir, progress=progress)
    stride.fit(documents)
    store = stride.attribute(queries, name="queries")
    RunInputs(assets.model_dir, [assets.corpus_path]).save(run_dir, queries=str(assets.queries_path), name="queries")
    attributed = time.perf_counter()

    click.echo("3/3 results")
    texts = dict(zip(documents.ids, documents.texts))
    for query in assets.queries[:show]:
        _print_query(store, query, texts)
    recovery = planted_recovery(store, assets.queries, len(documents), k=10)
    click.echo(
        f"\nA planted document ranks in the top {recovery.k} of {len(documents)} for "
        f"{recovery.hit_rate:.0%} of {recovery.queries} queries (a random ranking: {recovery.random_hit_rate:.1%})."
    )
    click.echo(f"Time: assets {built - started:.0f} s, attribution {attributed - built:.0f} s.")
    click.echo(f"Run directory: {run_dir}  (config.yaml, chunks.parquet, design.npz, operators/, responses/, scores/)")
    click.echo(f"Explore: curate top {run_dir} --query {assets.queries[0]['id']} -k 10")
    return recovery


def _print_query(store: ScoreStore, query: dict, texts: dict[str, str]) -> None:
    planted = set(query["planted_doc_ids"])
    click.echo(f"\nquery {query['id']}: {query['prompt']!r} -> {query['completion']!r}  (planted in {', '.join(sorted(planted))})")
    for direction, label, k in (("positive", "most influential", 5), ("negative", "least influential", 3)):
        table = store.top(query["id"], k=k, direction=direction)
        click.echo(f"  {label}:")
        if len(table) == 0:
            click.echo("    (none with a non-zero score)")
        for row in table.iter_rows(named=True):
            mark = "*" if row["doc_id"] in planted else " "
            snippet = textwrap.shorten(texts[row["doc_id"]], 70)
            click.echo(f"   {mark}{row['rank']:>2} {row['score']:+.4f} {row['doc_id']:<18} {snippet}")
