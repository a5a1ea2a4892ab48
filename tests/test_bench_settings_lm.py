"""The language-model benchmark settings at the smoke scale: caching, losses, retraining, determinism, disjointness.

Needs the shared real-text corpus (../shared/data); skipped where it is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # as in conftest.py

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "corpus").is_dir(), reason=f"the shared data ({SHARED_DATA}) is not available"
)


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory):
    from benchmarks.settings.pretrain import PretrainSetting

    cache = tmp_path_factory.mktemp("bench-cache")
    setting = PretrainSetting("smoke", cache=cache, data=SHARED_DATA)
    setting.model()  # trains and caches the full model
    return setting


def test_missing_data_is_a_clear_error(tmp_path):
    from benchmarks.settings.pretrain import PretrainSetting

    with pytest.raises(FileNotFoundError, match="shared"):
        PretrainSetting("smoke", cache=tmp_path, data=tmp_path / "nowhere")


def test_examples_and_queries(pretrain):
    train, queries = pretrain.train, pretrain.queries
    assert pretrain.name == "pretrain" and pretrain.kind == "causal-lm"
    assert set(train.domains) == set(queries.domains) == {"wiki", "shakespeare", "tales", "math"}
    assert not set(train.ids) & set(queries.ids)
    assert not set(train.texts) & set(queries.texts)
    for examples in (train, queries):
        tensors = examples.tensors
        assert tensors["input_ids"].shape == tensors["attention_mask"].shape == tensors["target_mask"].shape
        assert len(examples.texts) == len(examples.domains) == len(examples) == len(tensors["input_ids"])
        # every real token after bos is predicted, nothing else
        lengths = tensors["attention_mask"].sum(dim=1)
        assert torch.equal(tensors["target_mask"].sum(dim=1), (lengths - 1).float())
        assert (tensors["input_ids"][:, 0] == pretrain.tokenizer().bos_token_id).all()
    json_ready = __import__("json").dumps(pretrain.describe())
    assert "train_ids_sha256" in json_ready


def test_model_is_cached_and_reloads_identically(pretrain):
    from benchmarks.settings.pretrain import PretrainSetting

    batch = pretrain.queries.rows(range(4))
    first = pretrain.model()
    assert not first.training
    again = PretrainSetting("smoke", cache=pretrain.cache, data=SHARED_DATA)
    assert again.describe() == pretrain.describe()
    assert (again.folder / "model" / "COMPLETE").is_file()
    with torch.no_grad():
        a = first(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = again.model()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)


def test_example_losses_are_differentiable(pretrain):
    model = pretrain.model()
    batch = pretrain.train.rows([0, 1, 2])
    losses = pretrain.example_losses(model, batch)
    assert losses.shape == (3,)
    assert torch.isfinite(losses).all()
    losses.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)
    adapter = pretrain.adapter()
    logits = adapter.finish(adapter.capture(batch, "activation", 0), batch, "activation", 0)
    assert torch.allclose(adapter.example_losses(logits, batch), losses.detach(), atol=1e-5)


@pytest.mark.slow
def test_retrain_subsets_and_determinism(pretrain):
    n = len(pretrain.train)
    rng = np.random.default_rng(0)
    masks = np.zeros((2, n), dtype=bool)
    for row in masks:
        row[rng.choice(n, size=int(0.3 * n), replace=False)] = True
    losses = pretrain.retrain(masks, [1, 2])
    assert losses.shape == (2, len(pretrain.queries))
    assert np.isfinite(losses).all()
    assert not np.allclose(losses[0], losses[1])

    # two worker processes (the full scale's path) give the same losses as training in this process
    from benchmarks.settings.pretrain import PretrainSetting

    parallel = PretrainSetting("smoke", cache=pretrain.cache, data=SHARED_DATA, workers=2)
    np.testing.assert_allclose(parallel.retrain(masks, [1, 2]), losses, rtol=0, atol=1e-5)

    from benchmarks.settings.pretrain import query_losses

    full = query_losses(pretrain.model(), pretrain.queries.tensors)
    again = pretrain.retrain(np.ones((1, n), dtype=bool), [pretrain.seed])
    np.testing.assert_allclose(again[0], full, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def finetune(pretrain):
    from benchmarks.settings.finetune import FinetuneSetting

    setting = FinetuneSetting("smoke", cache=pretrain.cache, data=SHARED_DATA)  # reuses the cached base
    setting.model()
    return setting


def test_finetune_data(finetune, pretrain):
    assert finetune.name == "finetune" and finetune.kind == "causal-lm"
    assert not set(finetune.train.ids) & (set(pretrain.train.ids) | set(pretrain.queries.ids))
    assert all(text.startswith("Question: ") and "\nAnswer: " in text for text in finetune.train.texts)
    assert all(text.startswith("Question: ") and "\nAnswer: " in text for text in finetune.queries.texts)
    assert all(i.startswith("gsm8k-test-") for i in finetune.queries.ids)
    # the query loss counts the answer only: fewer targets than real tokens after bos
    tensors = finetune.queries.tensors
    assert (tensors["target_mask"].sum(dim=1) < tensors["attention_mask"].sum(dim=1) - 1).all()
    assert (tensors["target_mask"].sum(dim=1) > 0).all()


def test_finetune_model_and_retrain(finetune):
    from benchmarks.settings.pretrain import query_losses

    model = finetune.model()
    base = finetune.base.model()
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), base.parameters()))
    losses = finetune.example_losses(model, finetune.queries.rows([0, 1]))
    assert losses.shape == (2,) and losses.requires_grad
    n = len(finetune.train)
    masks = np.zeros((2, n), dtype=bool)
    masks[0, : n // 3] = True
    masks[1, n // 3 : 2 * n // 3] = True
    retrained = finetune.retrain(masks, [5, 6])
    assert retrained.shape == (2, len(finetune.queries)) and np.isfinite(retrained).all()
    full = query_losses(model, finetune.queries.tensors)
    again = finetune.retrain(np.ones((1, n), dtype=bool), [finetune.seed])
    np.testing.assert_allclose(again[0], full, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_deep_setting_is_a_four_layer_model_on_another_sample(pretrain):
    from benchmarks.settings import build_setting
    from benchmarks.settings.deep import DeepPretrainSetting
    from benchmarks.settings.pretrain import query_losses

    deep = DeepPretrainSetting("smoke", cache=pretrain.cache, data=SHARED_DATA)
    assert build_setting("deep", "smoke").name == deep.name == "deep" and deep.folder != pretrain.folder
    assert set(deep.train.ids) != set(pretrain.train.ids) and not set(deep.train.ids) & set(deep.queries.ids)
    model = deep.model()
    assert model.config.num_hidden_layers == 4
    # the full mask retrains the attributed model: ground truth and attribution see the same training recipe
    full = query_losses(model, deep.queries.tensors)
    again = deep.retrain(np.ones((1, len(deep.train)), dtype=bool), [deep.seed])
    np.testing.assert_allclose(again[0], full, rtol=0, atol=1e-5)
