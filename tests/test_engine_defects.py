"""Engine defects a user would notice: a resumed fit trains on the saved design, a document without chunks scores 0,
grouped CV holds its held-out subsets out of the group fit, force on one query set keeps the others, str paths, and
queries are checked before the fit."""
from __future__ import annotations

import importlib

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from stride_engine import Membership, Queries, ScoreStore, StrideError, Stride, preset, random_membership, read_documents, read_queries
from stride_engine.artifacts import RunDirectory, Stage, atomic_write_text
from stride_engine.corpus import Documents
from stride_engine.groups import fit_group_effects, group_design, groups_file
from stride_engine.recovery import RecoverySettings, cv_folds, recover
from stride_engine.scores import write_scores

from test_recovery import expander, one_thread  # noqa: F401 (one_thread: an autouse fixture, single-threaded torch)
from tiny import random_texts, tiny_model, tiny_tokenizer, write_jsonl

stride_module = importlib.import_module("stride_engine.stride")

TINY = dict(chunk_length=16, num_subsets=16, subsets_per_example=3, rank=4, steps=12, checkpoint_every=4,
            operators_per_step=4, linearity_every=6, linearity_operators=10, top_k=20)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny llama whose tokenizer has no BOS token (so an empty text tokenises to one token: no chunk)."""
    root = tmp_path_factory.mktemp("tiny_lm")
    texts = random_texts(60, seed=5)
    base = tiny_tokenizer(texts)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tiny_model("llama", len(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    documents = Documents([f"doc{i}" for i in range(len(texts))], texts, ["greek"] * len(texts))
    return root / "model", documents


def _stride(tiny_lm, run_dir, **overrides) -> Stride:
    return Stride.from_pretrained(tiny_lm[0], preset("cpu-smoke", **{**TINY, **overrides}), run_dir, progress=False)


QUERIES = Queries(["q1", "q2"], ["alpha beta", ""], [" gamma delta", "iota kappa lambda mu"])


# ------------------------------------------------------------------------------ 1. the saved design is used


class Interrupt(Exception):
    pass


def test_a_resumed_fit_trains_on_the_saved_design_not_a_redraw(tiny_lm, tmp_path, monkeypatch):
    documents = tiny_lm[1]
    _stride(tiny_lm, tmp_path / "straight").fit(documents)

    def crash(step):
        if step == 6:  # after the checkpoint at step 4
            raise Interrupt

    with pytest.raises(Interrupt):
        _stride(tiny_lm, tmp_path / "resumed").fit(documents, on_step=crash)
    saved = (tmp_path / "resumed" / "design.npz").read_bytes()
    # A redraw that differs from the saved design (as after a numpy upgrade changed the generator's stream).
    real = random_membership
    monkeypatch.setattr(stride_module, "random_membership", lambda n, k, d, seed: real(n, k, d, seed + 1))
    resumed = _stride(tiny_lm, tmp_path / "resumed").fit(documents)

    assert (tmp_path / "resumed" / "design.npz").read_bytes() == saved
    expected = load_file(tmp_path / "straight" / "operators" / "bank.safetensors")
    got = load_file(tmp_path / "resumed" / "operators" / "bank.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-7, msg=f"operator weights {name} differ")
    resumed.attribute(QUERIES)
    np.testing.assert_allclose(
        np.load(tmp_path / "resumed" / "responses" / "queries.npy"),
        _stride(tiny_lm, tmp_path / "straight").fit(documents).responses(QUERIES), rtol=1e-5, atol=1e-7,
    )


# ------------------------------------------------------------------------ 2. a document without chunks


def test_a_document_without_chunks_scores_zero_and_every_aggregate_is_finite(tiny_lm, tmp_path):
    model_dir, documents = tiny_lm
    with_empty = Documents(documents.ids + ["empty"], documents.texts + [""], documents.domains + ["greek"])
    store = _stride(tiny_lm, tmp_path / "run").fit(with_empty).attribute(QUERIES)

    docs = store.documents()
    assert docs.filter(pl.col("doc_id") == "empty")["chunks"].item() == 0  # a user can see it was never measured
    assert (docs.filter(pl.col("doc_id") != "empty")["chunks"] >= 1).all()
    empty = docs.filter(pl.col("doc_id") == "empty").row(0, named=True)
    assert empty["mean_score"] == 0 and empty["mean_standardized_score"] == 0
    assert empty["positive_mass"] == 0 and empty["negative_mass"] == 0 and empty["nonzero_queries"] == 0
    for table in (docs, store.queries(), store.top(k=100, direction="negative"), store.top(k=100), store.chunk_scores()):
        for column, dtype in table.schema.items():
            if dtype.is_float():
                assert table[column].is_finite().all(), f"{column} has -inf/NaN"
    assert "empty" not in store.top(k=100, direction="negative")["doc_id"].to_list()


def test_max_aggregate_of_a_document_without_chunks_is_zero(tmp_path):
    scores = np.array([[0.5, -2.0, -1.0, 0.0], [-0.5, 1.0, -3.0, 0.0]])
    store = write_scores(
        tmp_path / "store", [(np.arange(2), scores, np.zeros(2))], ["a", "b"], np.ones(2), ["d0", "d1", "d2"],
        [None] * 3, np.array([0, 0, 2, 2]), aggregate="max", top_k=5, keep_all_nonzeros=True,
    )
    docs = store.documents()
    assert docs["chunks"].to_list() == [2, 0, 2]
    # d0: the largest |score| of (0.5, −2.0) and of (−0.5, 1.0), signed; d2: of (−1.0, 0.0) and (−3.0, 0.0)
    assert docs["mean_score"].to_list() == pytest.approx([(-2.0 + 1.0) / 2, 0.0, (-1.0 - 3.0) / 2])
    assert np.isfinite(store.queries()["score_std"].to_numpy()).all()


# --------------------------------------------------------------------------- 3. grouped cross-validation


def test_grouped_cv_fits_the_group_effects_without_the_held_out_subsets(monkeypatch):
    """The null model's CV error (group effects only, no sparse rest) equals a by-hand computation in which each
    fold's group effects were fitted on its training subsets alone, and is larger than the optimistic one."""
    n, k, num_groups = 600, 40, 4
    m = expander(n, k, 4, seed=2)
    rng = np.random.default_rng(3)
    groups = rng.integers(0, num_groups, n)
    y = 1.0 + (m @ np.where(groups == 0, 0.05, 0.0))[None, :] + 0.3 * rng.standard_normal((2, k))
    settings = RecoverySettings(lambda_rule="cv", cv_folds=5)
    recovery = importlib.import_module("stride_engine.recovery")
    seen = []
    real = recovery.choose_lambda_cv
    monkeypatch.setattr(recovery, "choose_lambda_cv", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    list(recover(m, y, settings, groups=groups))
    null_error = seen[0][1][0].double().numpy() * y.std(axis=1) ** 2  # recovery solves in each query's own units

    design = group_design(m, groups)
    y_k = y.T  # (K, b)

    def cv_null_error(fit_rows_of):
        errors = []
        for held in cv_folds(k, settings.cv_folds, settings.cv_seed):
            train = np.setdiff1d(np.arange(k), held)
            rows = fit_rows_of(train)
            effects = fit_group_effects(design[rows], y_k[rows] - y_k[rows].mean(0), settings.group_ridge)
            resid = y_k - design @ effects
            errors.append(((resid[held] - resid[train].mean(0)) ** 2).mean(0))
        return np.mean(errors, axis=0)

    honest = cv_null_error(lambda train: train)
    optimistic = cv_null_error(lambda train: np.arange(k))  # the group effects saw the held-out subsets
    print(f"null model CV error: honest {honest}, optimistic {optimistic}, recovery's {null_error}")
    assert (optimistic < 0.97 * honest).all()  # the case is one where it matters
    np.testing.assert_allclose(null_error, honest, rtol=1e-4)


def test_fixed_lambda_grouped_scores_are_group_effects_plus_the_lasso_rest():
    """The non-CV path is unchanged: the group effects are fitted on all K subsets."""
    n, k = 300, 30
    m = expander(n, k, 3, seed=4)
    rng = np.random.default_rng(5)
    groups = rng.integers(0, 3, n)
    y = (m @ np.where(groups == 1, 0.1, 0.0))[None, :] + 0.1 * rng.standard_normal((1, k))
    grouped = np.concatenate([s for _, s, _ in recover(m, y, RecoverySettings(lambda_rule="fixed"), groups=groups)])
    design = group_design(m, groups)
    y_c = y.T - y.T.mean(0)
    effects = fit_group_effects(design, y_c, 1.0)
    rest = y_c - (design - design.mean(0)) @ effects
    sparse = np.concatenate([s for _, s, _ in recover(m, rest.T, RecoverySettings(lambda_rule="fixed"))])
    np.testing.assert_allclose(grouped, effects[groups].T + sparse, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ 4. force on one query set


def test_forcing_one_query_set_keeps_the_other_sets_stages(tiny_lm, tmp_path, monkeypatch):
    documents = tiny_lm[1]
    run = tmp_path / "run"
    stride = _stride(tiny_lm, run).fit(documents)
    other = Queries(["o1"], [""], ["theta iota kappa"])
    stride.attribute(QUERIES, name="a")
    stride.attribute(other, name="b")
    kept = [run / "stages" / "responses-b.json", run / "stages" / "scores-b.json", run / "responses" / "b.npy",
            run / "scores" / "b" / "documents.parquet"]
    before = {path: path.stat().st_mtime_ns for path in kept}

    changed = Queries(["q1"], ["alpha"], [" beta gamma"])
    store = stride.attribute(changed, name="a", force=True)  # new queries under the same name
    assert store.queries()["query_id"].to_list() == ["q1"]
    assert {path: path.stat().st_mtime_ns for path in kept if path.exists()} == before
    # b is served from what was saved: nothing is measured or recovered again
    monkeypatch.setattr(stride_module, "measure_responses", lambda *a, **kw: pytest.fail("b was measured again"))
    monkeypatch.setattr(stride_module, "recover", lambda *a, **kw: pytest.fail("b was recovered again"))
    stride.attribute(other, name="b")
    assert {path: path.stat().st_mtime_ns for path in kept} == before
    monkeypatch.undo()

    # A stale training stage still drops every query set's stages after it.
    _stride(tiny_lm, run, rank=3).fit(documents, force=True)
    assert not list((run / "stages").glob("responses-*.json")) and not list((run / "stages").glob("scores-*.json"))


# ------------------------------------------------------------------------------------------ 5. str paths


def test_public_functions_accept_str_paths(tiny_lm, tmp_path):
    model_dir, documents = tiny_lm
    train = write_jsonl(tmp_path / "train.jsonl", [{"id": i, "text": t} for i, t in zip(documents.ids, documents.texts)])
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"id": "q", "text": "alpha beta gamma"}])
    assert len(read_documents([str(train)])) == len(documents) and read_queries(str(queries)).ids == ["q"]
    assert read_documents(str(train)).ids == read_documents(train).ids == documents.ids  # one file, not a list

    stride = Stride.from_pretrained(str(model_dir), preset("cpu-smoke", **TINY), str(tmp_path / "run"), progress=False)
    assert stride.run.root == tmp_path / "run"

    folder = str(tmp_path / "store")
    written = write_scores(folder, [(np.arange(1), np.array([[1.0, -1.0]]), np.zeros(1))], ["q"], np.ones(1),
                           ["d0", "d1"], [None, None], np.array([0, 1]), aggregate="max", top_k=5, keep_all_nonzeros=True)
    store = ScoreStore(folder)
    assert store == written and store.is_current() and store.top("q")["doc_id"].to_list() == ["d0"]

    design = random_membership(20, 4, 2, seed=0)
    design.save(str(tmp_path / "design.npz"))
    assert (Membership.load(str(tmp_path / "design.npz")).matrix != design.matrix).nnz == 0

    run = RunDirectory(str(tmp_path / "run2"))
    run.finish(Stage("chunks", {"x": 1}))
    assert run.is_done(Stage("chunks", {"x": 1}))
    atomic_write_text(str(tmp_path / "note.txt"), "hello")
    assert (tmp_path / "note.txt").read_text() == "hello"
    assert groups_file(str(tmp_path), 3) == tmp_path / "groups" / "3.parquet"


# ------------------------------------------------------------------------- 6. queries checked before fit


def test_check_queries_refuses_a_too_long_query_before_any_fit(tiny_lm, tmp_path):
    run = tmp_path / "run"
    stride = _stride(tiny_lm, run)
    stride.check_queries(QUERIES)  # good queries pass on an unfitted Stride
    too_long = Queries(["ok", "long"], ["", "alpha " * 100], ["beta gamma", "delta"])
    with pytest.raises(StrideError, match=r"query 'long' is \d+ tokens long, more than the model's window \(64\); shorten it"):
        stride.check_queries(too_long)
    with pytest.raises(StrideError, match="the completion encodes to no tokens"):
        stride.check_queries(Queries(["blank"], ["alpha"], [""]))
    assert not run.exists()  # nothing was written


def test_a_tokenizer_called_before_the_fit_does_not_make_the_run_look_rebuilt(tmp_path):
    """A fast tokenizer keeps its last padding and truncation settings in its state: `curate attribute` fits queries
    to the window before it opens the run, which made a run fitted by `curate fit` look built by another tokenizer."""
    from stride_engine.stride import _digest_tokenizer
    from tiny import random_texts, save_tiny_model, write_jsonl

    texts = random_texts(40, seed=5)
    model = save_tiny_model(tmp_path / "model", "llama", texts)
    train = read_documents([write_jsonl(tmp_path / "train.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])])
    config = preset("cpu-smoke", chunk_length=16, num_subsets=8, subsets_per_example=2, rank=2, steps=2,
                    operators_per_step=2, linearity_weight=0.0)
    fresh = Stride.from_pretrained(model, config, tmp_path / "run", progress=False)
    called = Stride.from_pretrained(model, config, tmp_path / "run", progress=False)
    called.tokenizer(["a b c", "d"], padding=True, truncation=True, max_length=3)
    assert _digest_tokenizer(called.tokenizer) != _digest_tokenizer(fresh.tokenizer)  # the call did change its state
    assert called._training_stages(train)["chunks"].fingerprint == fresh._training_stages(train)["chunks"].fingerprint
