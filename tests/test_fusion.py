"""STRIDE fused with EK-FAC (fuse='ekfac'): planted facts found, every query scored, parts equal to one call."""

import shutil
import sys

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from curate.cli import main
from curate.demo.run import planted_recovery
from stride_engine import ConfigError, Queries, Stride, preset, read_documents, read_queries
from stride_engine.fusion import fuse, fused_batches
from stride_engine.merge import merge_without_model

from tiny import random_texts, save_tiny_model, write_jsonl


def test_fuse_puts_both_methods_on_one_scale_and_keeps_the_peer_where_stride_is_silent():
    stride = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])  # query 0: STRIDE gave it no score
    peer = np.array([[10.0, 30.0, 20.0, 40.0], [400.0, 300.0, 200.0, 100.0]])  # another unit, another scale
    fused = fuse(stride, peer, 0.5)
    assert np.argsort(-fused[0]).tolist() == [3, 1, 2, 0]  # the peer's order, whole
    np.testing.assert_allclose(fused[1], 0.0, atol=1e-12)  # opposite orders of equal say cancel, whatever the units
    batches = list(fused_batches([(np.array([0, 1]), stride.astype(np.float32), np.zeros(2))], peer, 1.0))
    assert np.argsort(-batches[0][1][1]).tolist() == [3, 2, 1, 0]  # fuse_weight=1: STRIDE's order alone
    with pytest.raises(ValueError, match="shapes"):
        fuse(stride, peer[:, :3])


@pytest.mark.parametrize("changes, message", [
    (dict(fuse="trak"), r"fuse='trak' is not one of \['none', 'ekfac'\]"),
    (dict(fuse="ekfac", fuse_weight=1.5), r"fuse_weight .* must be in \[0, 1\], got 1.5"),
])
def test_bad_fusion_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        preset("default", **changes)


def test_a_missing_kronfluence_is_named_with_its_install_line(demo_run, demo_assets, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    monkeypatch.setitem(sys.modules, "kronfluence.analyzer", None)  # import fails as if it were not installed
    stride = Stride.from_pretrained(demo_assets.model_dir, preset("cpu-smoke", fuse="ekfac"), run, progress=False)
    with pytest.raises(ConfigError, match=r"kronfluence, which is not installed: `pip install --no-deps kronfluence"):
        stride.fit(read_documents([demo_assets.corpus_path]))
    assert not (run / "peers").exists() and not (run / "stages" / "peer-factors-ekfac.json").exists()


def test_curate_attribute_fuse_finds_the_planted_documents_and_scores_every_query(demo_run, demo_assets, tmp_path):
    """The demo's planted facts (each query's answer taught by its planted documents alone), attributed with
    `curate attribute --fuse ekfac` on a run `curate fit` made, then recovered again at the two ends of fuse_weight."""
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    result = CliRunner().invoke(main, ["attribute", "--config", str(run / "config.yaml"), "--out", str(run),
                                       "--queries", str(demo_assets.queries_path), "--name", "facts", "--fuse", "ekfac", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "fused with ekfac (STRIDE's share 0.5)" in result.output
    assert "fuse: ekfac" in (run / "config.yaml").read_text()  # saved: --config RUN/config.yaml repeats it
    documents = read_documents([demo_assets.corpus_path])
    queries = read_queries(demo_assets.queries_path)
    peer_scores = np.load(run / "responses" / "facts.ekfac.npy")
    assert peer_scores.shape == (len(queries), len(pl.read_parquet(run / "chunks.parquet")))
    factors = (run / "stages" / "peer-factors-ekfac.json").stat().st_mtime_ns
    peer = (run / "stages" / "peer-ekfac-facts.json").stat().st_mtime_ns

    top1 = {}
    for weight in (0.5, 1.0, 0.0):  # fused; STRIDE's order alone; EK-FAC's alone: recovery only, from the kept scores
        config = preset("cpu-smoke", fuse="ekfac", fuse_weight=weight)
        stride = Stride.from_pretrained(demo_assets.model_dir, config, run, progress=False).fit(documents, force=True)
        store = stride.attribute(queries, name="facts", force=True)
        assert (store.queries()["nonzero_chunks"] > 0).all()
        assert planted_recovery(store, demo_assets.queries, len(documents), k=10).hit_rate >= 0.9
        top1[weight] = planted_recovery(store, demo_assets.queries, len(documents), k=1).hit_rate
    print(f"planted document ranked first: fused {top1[0.5]:.2f}, STRIDE {top1[1.0]:.2f}, EK-FAC {top1[0.0]:.2f}")
    # Seen: fused 1.00, STRIDE 0.96, EK-FAC 1.00 of 48 queries (the demo's facts are easy for both methods).
    assert top1[0.5] >= 0.9
    assert top1[0.5] >= top1[1.0]
    # the factors and the peer's scores were kept, not recomputed
    assert (run / "stages" / "peer-factors-ekfac.json").stat().st_mtime_ns == factors
    assert (run / "stages" / "peer-ekfac-facts.json").stat().st_mtime_ns == peer
    shown = CliRunner().invoke(main, ["top", str(run), "--name", "facts", "--query", queries.ids[0], "-k", "3"])
    assert shown.exit_code == 0 and "most influential documents" in shown.output


def test_the_peer_scores_a_query_set_in_blocks_that_equal_one_call(tmp_path, monkeypatch):
    """Bounded memory: a set is scored a block of queries at a time into the kept file; the rows are the ones a
    single call gives, in the set's order, and a rerun keeps them."""
    import stride_engine.fusion as fusion

    texts = random_texts(40, seed=31)
    model = save_tiny_model(tmp_path / "model", "llama", texts)
    train = write_jsonl(tmp_path / "train.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(texts)])
    config = preset("cpu-smoke", chunk_length=16, num_subsets=16, subsets_per_example=3, rank=4, steps=6,
                    operators_per_step=4, linearity_every=3, linearity_operators=12, top_k=10, micro_batch=4, fuse="ekfac")
    stride = Stride.from_pretrained(model, config, tmp_path / "run", progress=False).fit(read_documents([train]))
    words = [" ".join(t.split()[:6]) for t in random_texts(11, seed=32)]
    queries = Queries(ids=[f"q{i}" for i in range(11)], prompts=[""] * 11, completions=words)
    calls = []
    score = fusion.Peer.score
    monkeypatch.setattr(fusion, "PEER_QUERY_BLOCK", 4)
    monkeypatch.setattr(fusion.Peer, "score", lambda self, batch: calls.append(len(batch["input_ids"])) or score(self, batch))
    stride.responses(queries, name="target")
    assert calls == [4, 4, 3]
    kept = np.load(tmp_path / "run" / "responses" / "target.ekfac.npy")
    batch, _ = stride._query_batch(queries)
    np.testing.assert_allclose(kept, score(stride._peer(), batch), rtol=1e-4, atol=1e-7)
    stride.responses(queries, name="target")
    assert calls == [4, 4, 3]  # kept, not scored again


@pytest.mark.slow
def test_fused_parts_merge_into_the_store_one_call_writes(tmp_path):
    texts = random_texts(60, seed=21)
    model = save_tiny_model(tmp_path / "model", "llama", texts)
    train = write_jsonl(tmp_path / "train.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(texts)])
    config = preset("cpu-smoke", chunk_length=16, num_subsets=16, subsets_per_example=3, rank=4, steps=12,
                    operators_per_step=4, linearity_every=6, linearity_operators=12, top_k=20, micro_batch=16, fuse="ekfac")
    run = tmp_path / "run"
    Stride.from_pretrained(model, config, run, progress=False).fit(read_documents([train]))
    words = [" ".join(t.split()[:8]) for t in random_texts(150, seed=22)]  # parts cut at 64 queries: 64 + 64 + 22
    queries = Queries(ids=[f"q{i}" for i in range(150)], prompts=[""] * 150, completions=words)
    parted = tmp_path / "parted"
    shutil.copytree(run, parted)

    def reopened(folder):
        return Stride.from_pretrained(model, config, folder, progress=False).fit(read_documents([train]))

    whole = reopened(run).attribute(queries, name="target")
    for part in (2, 0, 1):
        reopened(parted).attribute_part(queries, "target", part, 3)
    merged = merge_without_model(parted, queries, "target", 3)  # what the datatrove merge task does: no model
    assert merged is not None
    np.testing.assert_allclose(np.load(parted / "responses" / "target.ekfac.npy"), np.load(run / "responses" / "target.ekfac.npy"),
                               rtol=1e-4, atol=1e-6)
    ours, theirs = merged.top(k=20), whole.top(k=20)
    assert ours.select("query_id", "doc_id", "direction").equals(theirs.select("query_id", "doc_id", "direction"))


@pytest.mark.slow
def test_a_fused_run_selects_the_documents_that_teach_the_target(demo_run, demo_assets, tmp_path):
    """`curate fit --set fuse=ekfac`, then `curate select`: the target's scores are fused, the planted documents kept."""
    from curate.select import SelectionRequest, run_selection

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    Stride.from_pretrained(demo_assets.model_dir, preset("cpu-smoke", fuse="ekfac"), run, progress=False).fit(
        read_documents([demo_assets.corpus_path]), force=True)  # the shared run holds other tests' unfused stores
    queries = demo_assets.queries[:12]
    target = write_jsonl(tmp_path / "facts.jsonl", [{k: q[k] for k in ("id", "prompt", "completion")} for q in queries])
    manifest = run_selection(SelectionRequest(run=str(run), target=str(target), budget="10%", out=str(tmp_path / "out")))
    kept = {row["id"] for row in manifest["selected_documents"]}
    planted = {d for q in queries for d in q["planted_doc_ids"]}
    assert len(planted & kept) / len(planted) >= 0.4  # a random 10% would keep ~10% of them
    assert list((run / "responses").glob("target-*.ekfac.npy"))  # the target's EK-FAC scores were fused in
