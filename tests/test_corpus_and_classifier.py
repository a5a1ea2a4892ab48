"""Parquet corpora, chunk -> document mapping, and the engine on a plain torch classifier."""

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from stride_engine import ConfigError, Examples, SequentialClassifierAdapter, Stride, preset, read_documents
from stride_engine.corpus import chunk_documents

from tiny import random_texts, tiny_tokenizer


def test_parquet_corpus_with_custom_fields_and_long_documents(tmp_path):
    texts = random_texts(30, seed=2)
    long_text = " ".join(texts)  # far longer than one chunk
    pl.DataFrame({"doc": [f"p{i}" for i in range(31)], "body": texts + [long_text], "domain": ["a"] * 31}).write_parquet(tmp_path / "c.parquet")
    documents = read_documents([tmp_path / "c.parquet"], text_field="body", id_field="doc")
    assert documents.ids[-1] == "p30" and documents.texts[-1] == long_text and documents.domains[0] == "a"
    chunks = chunk_documents(documents, tiny_tokenizer(texts), chunk_length=16)
    per_doc = np.bincount(chunks.doc_index, minlength=len(documents))
    assert per_doc[-1] > 5 and (per_doc[:-1] >= 1).all()
    assert (chunks.lengths <= 16).all() and (chunks.input_ids.shape[1] == 16)
    # The chunks of the long document tile it in order, without gaps.
    starts = chunks.token_start[chunks.doc_index == 30]
    np.testing.assert_array_equal(starts, np.arange(len(starts)) * 16)


def test_classifier_queries_find_their_own_training_example(tmp_path):
    """A query that duplicates a mislabelled training point is attributed to that point (planted ground truth)."""
    model, train, x, y = _trained_classifier(steps=300)
    n, planted = len(y), torch.arange(20)  # the third class, seen only on these points: only they can teach it
    queries = Examples({"x": x[planted], "y": y[planted]}, [f"q{i}" for i in range(len(planted))], np.arange(len(planted)), [None] * len(planted))
    config = preset("cpu-smoke", num_subsets=64, subsets_per_example=4, steps=300, fidelity_batch=4, stability_batch=4, rank=4)
    stride = Stride(SequentialClassifierAdapter(model), config, tmp_path / "run", progress=False).fit(train)
    store = stride.attribute(queries)
    top = store.top(k=10)
    hits = sum(f"ex{int(q[1:])}" in set(top.filter(pl.col("query_id") == q)["doc_id"]) for q in queries.doc_ids)
    teachers = top.filter(pl.col("rank") <= 5)["doc_id"].is_in([f"ex{i}" for i in planted.tolist()]).mean()
    print(f"classifier: the query's own training point is in its top 10 for {hits} of {len(planted)} queries "
          f"(random: {10 / n:.3f} each); share of top-5 entries that are class-2 points: {teachers:.2f} (random 0.05)")
    # Seen with seed 0: 12 of 20 (random ranking: 0.5 expected), and 0.53 of the top-5 entries (random: 0.05).
    assert hits >= 7
    assert teachers >= 0.3


def _trained_classifier(steps: int):
    """Two classes split by the first feature plus a third seen only on the first 20 points, an MLP trained on them
    full-batch for `steps` (2000: sure of every training point, p > 0.9999, its loss there saturated)."""
    generator = torch.Generator().manual_seed(0)
    n = 400
    x = torch.randn(n, 10, generator=generator)
    y = (x[:, 0] > 0).long()
    y[:20] = 2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    train = Examples({"x": x, "y": y}, [f"ex{i}" for i in range(n)], np.arange(n), [None] * n)
    return model, train, x, y


@pytest.mark.parametrize("measurement", ["loss", "log-odds"])
def test_queries_a_classifier_is_sure_of_still_get_scores_from_their_own_class(tmp_path, measurement):
    """Its loss on them moves by 1e-12 to 1e-26 under steering (a float32 loss there is rounding noise: 26 of these 40
    queries used to get no score at all); measured in float64 and solved in each query's own units, or by log-odds,
    which does not saturate, every query gets scores, and its most helpful training points are mostly of its own class
    (planted: the classes are what the points teach)."""
    model, train, x, y = _trained_classifier(steps=2000)
    with torch.no_grad():
        assert float(torch.softmax(model(x), -1)[torch.arange(len(y)), y].min()) > 0.9999
    rows = torch.arange(0, len(y), 10)
    queries = Examples({"x": x[rows], "y": y[rows]}, [f"q{i}" for i in rows.tolist()], np.arange(len(rows)), [None] * len(rows))
    config = preset("cpu-smoke", num_subsets=64, subsets_per_example=4, steps=300, fidelity_batch=4, stability_batch=4,
                    rank=4, measurement=measurement)
    store = Stride(SequentialClassifierAdapter(model), config, tmp_path / "run", progress=False).fit(train).attribute(queries)
    assert (store.queries()["nonzero_chunks"] > 0).all()
    top = store.top(k=5)
    same = [int(y[int(d[2:])]) == int(y[int(q[1:])]) for q, d in zip(top["query_id"], top["doc_id"])]
    # chance: about 0.45 (two classes of ~190 points and one of 20)
    print(f"saturated classifier ({measurement}): share of top-5 entries of the query's own class {np.mean(same):.2f}")
    assert np.mean(same) >= 0.6


def test_a_query_label_outside_the_classes_is_named_and_nothing_is_written(tmp_path):
    model, train, x, y = _trained_classifier(steps=2000)
    config = preset("cpu-smoke", num_subsets=16, subsets_per_example=2, steps=5, fidelity_batch=2, stability_batch=2,
                    rank=2, linearity_weight=0.0)
    stride = Stride(SequentialClassifierAdapter(model), config, tmp_path / "run", progress=False).fit(train)
    queries = Examples({"x": x[:3], "y": torch.tensor([0, 7, 1])}, ["fine", "bad-label", "also-fine"], np.arange(3), [None] * 3)
    with pytest.raises(ConfigError, match="undefined for query 'bad-label'.*outside the model's 3 outputs"):
        stride.responses(queries, name="checked")
    assert not list((tmp_path / "run").glob("responses/checked*"))
