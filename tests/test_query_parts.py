"""A query set attributed in parts by separate workers, then merged: the same store as one `attribute` call."""

import json
import shutil

import numpy as np
import polars as pl
import pytest

from stride_engine import ConfigError, Queries, ScoreStore, StrideError, Stride, preset, read_documents

from tiny import random_texts, save_tiny_model, write_jsonl

TINY = dict(chunk_length=16, num_subsets=16, subsets_per_example=3, rank=4, steps=12, checkpoint_every=6,
            operators_per_step=4, linearity_every=6, linearity_operators=12, top_k=20, micro_batch=16)
QUERIES = 150  # recovery solves 64 queries at a time: three batches, the last one short


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    texts = random_texts(90, seed=11)
    model = save_tiny_model(root / "model", "llama", texts)
    train = write_jsonl(root / "train.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(texts)])
    run = root / "run"
    config = preset("cpu-smoke", **TINY)
    Stride.from_pretrained(model, config, run, progress=False).fit(read_documents([train]))
    words = [" ".join(text.split()[:8]) for text in random_texts(QUERIES, seed=12)]
    queries = Queries(ids=[f"q{i}" for i in range(QUERIES)], prompts=[""] * QUERIES, completions=words)
    return model, train, run, config, queries


def _reopened(fitted, run):
    model, train, _, config, _ = fitted
    return Stride.from_pretrained(model, config, run, progress=False).fit(read_documents([train]))


def test_parts_merge_into_the_store_one_call_writes(fitted, tmp_path):
    _, _, run, _, queries = fitted
    whole_run, parted_run = tmp_path / "whole", tmp_path / "parted"
    shutil.copytree(run, whole_run)
    shutil.copytree(run, parted_run)
    whole = _reopened(fitted, whole_run).attribute(queries, name="target")

    workers = [_reopened(fitted, parted_run) for _ in range(4)]  # four workers; one of them gets no whole batch
    for part in (3, 1, 0):
        workers[part].attribute_part(queries, "target", part, 4)
    with pytest.raises(StrideError, match=r"1 of the 4 parts of query set 'target' are not finished \(00002-of-00004\)"):
        workers[0].merge_parts(queries, "target", 4)
    assert not (parted_run / "scores" / "target").exists()  # nothing half-merged
    workers[2].attribute_part(queries, "target", 2, 4)
    merged = workers[0].merge_parts(queries, "target", 4)

    assert np.array_equal(np.load(parted_run / "responses" / "target.npy"), np.load(whole_run / "responses" / "target.npy"))
    for name in ("top.parquet", "chunk_scores.parquet", "queries.parquet"):
        assert pl.read_parquet(merged.folder / name).equals(pl.read_parquet(whole.folder / name)), name
    ours, theirs = merged.documents(), whole.documents()
    assert ours.select("doc_id", "domain", "nonzero_queries", "chunks").equals(theirs.select("doc_id", "domain", "nonzero_queries", "chunks"))
    for column in ("mean_score", "mean_standardized_score", "positive_mass", "negative_mass"):
        np.testing.assert_allclose(ours[column].to_numpy(), theirs[column].to_numpy(), rtol=1e-12, atol=1e-15)
    assert not (parted_run / "parts").joinpath("target").exists()  # the parts go once merged

    # The merged set is a finished stage: attribute reuses it, and a late worker finds nothing to do.
    again = _reopened(fitted, parted_run)
    assert again.attribute(queries, name="target").documents().equals(ours)
    again.attribute_part(queries, "target", 1, 4)
    assert not (parted_run / "parts").joinpath("target").exists()


def test_a_part_is_kept_and_a_stale_one_recomputed(fitted, tmp_path):
    _, _, run, _, queries = fitted
    parted_run = tmp_path / "parted"
    shutil.copytree(run, parted_run)
    worker = _reopened(fitted, parted_run)
    worker.attribute_part(queries, "target", 0, 2)
    record = parted_run / "parts" / "target" / "00000-of-00002" / "part.json"
    written = record.stat().st_mtime_ns
    worker.attribute_part(queries, "target", 0, 2)  # a rerun (a datatrove task retried) skips the finished part
    assert record.stat().st_mtime_ns == written

    record.write_text(record.read_text().replace('"scores": "', '"scores": "stale'))  # a part of another configuration
    with pytest.raises(StrideError, match="00000-of-00002"):
        worker.merge_parts(queries, "target", 2)
    worker.attribute_part(queries, "target", 0, 2)
    worker.attribute_part(queries, "target", 1, 2)
    assert len(worker.merge_parts(queries, "target", 2).queries()) == QUERIES


def test_a_part_outside_the_parts_is_refused(fitted):
    _, _, run, _, queries = fitted
    with pytest.raises(ConfigError, match=r"part 2 is not one of the 2 parts \(0..1\)"):
        _reopened(fitted, run).attribute_part(queries, "target", 2, 2)


def test_parts_merge_without_the_model(fitted, tmp_path):
    """The merge task reads the run's records only: with the model folder gone it writes the store one call writes,
    and it refuses parts measured on other queries or under another configuration."""
    from stride_engine.merge import merge_without_model

    model, _, run, _, queries = fitted
    whole_run, parted_run = tmp_path / "whole", tmp_path / "parted"
    shutil.copytree(run, whole_run)
    shutil.copytree(run, parted_run)
    whole = _reopened(fitted, whole_run).attribute(queries, name="target")
    worker = _reopened(fitted, parted_run)
    for part in range(3):
        worker.attribute_part(queries, "target", part, 3)

    hidden = tmp_path / "model-elsewhere"
    shutil.move(model, hidden)  # nothing below may read the model
    try:
        other = Queries(ids=queries.ids, prompts=queries.prompts, completions=["another text"] + queries.completions[1:])
        with pytest.raises(StrideError, match=r"3 of the 3 parts of query set 'target' are not finished"):
            merge_without_model(parted_run, other, "target", 3)
        record = parted_run / "parts" / "target" / "00001-of-00003" / "part.json"
        kept = record.read_text()
        record.write_text(kept.replace('"scores": "', '"scores": "stale'))  # a part of another configuration
        with pytest.raises(StrideError, match=r"1 of the 3 parts .* \(00001-of-00003\)"):
            merge_without_model(parted_run, queries, "target", 3)
        assert not (parted_run / "scores" / "target").exists()  # nothing half-merged
        record.write_text(kept)
        merged = merge_without_model(parted_run, queries, "target", 3)
    finally:
        shutil.move(hidden, model)

    assert np.array_equal(np.load(parted_run / "responses" / "target.npy"), np.load(whole_run / "responses" / "target.npy"))
    for name in ("top.parquet", "chunk_scores.parquet", "queries.parquet"):
        assert pl.read_parquet(merged.folder / name).equals(pl.read_parquet(whole.folder / name)), name
    assert merged.documents().select("doc_id", "domain", "chunks").equals(whole.documents().select("doc_id", "domain", "chunks"))
    np.testing.assert_allclose(merged.documents()["mean_score"].to_numpy(), whole.documents()["mean_score"].to_numpy(),
                               rtol=1e-12, atol=1e-15)
    assert not (parted_run / "parts" / "target").exists()
    assert merge_without_model(parted_run, queries, "target", 3) is None  # merged: no parts left, the engine's to answer
    # a finished stage as the engine records it: the reopened engine reuses the merged store
    assert _reopened(fitted, parted_run).attribute(queries, name="target").documents().equals(merged.documents())


def test_parts_from_before_the_records_fall_back_to_the_engine(fitted, tmp_path):
    from stride_engine.merge import merge_without_model

    _, _, run, _, queries = fitted
    parted_run = tmp_path / "parted"
    shutil.copytree(run, parted_run)
    worker = _reopened(fitted, parted_run)
    for part in range(2):
        worker.attribute_part(queries, "target", part, 2)
    for part in range(2):  # parts as an older version wrote them: no record of their queries
        record = parted_run / "parts" / "target" / f"{part:05d}-of-00002" / "part.json"
        fields = json.loads(record.read_text())
        record.write_text(json.dumps({"scores": fields["scores"], "rows": fields["rows"]}))
    assert merge_without_model(parted_run, queries, "target", 2) is None
    assert len(worker.merge_parts(queries, "target", 2).queries()) == QUERIES
