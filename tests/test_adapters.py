"""The cut is exact: finishing a forward pass from captured states reproduces the model's own logits."""

import pytest
import torch
from torch import nn

from stride_engine import CausalLMAdapter, ConfigError, ModelAdapter, ModelError, SequentialClassifierAdapter, load_causal_lm
from stride_engine.corpus import token_batch

from tiny import random_texts, save_tiny_model, tiny_model, tiny_tokenizer

ARCHS = ["gpt2", "llama", "qwen2", "olmo", "olmo2"]


def _batch(tokenizer, texts):
    import numpy as np

    ids = [tokenizer(t)["input_ids"][:20] for t in texts]
    width = max(map(len, ids))
    array = np.full((len(ids), width), tokenizer.pad_token_id, dtype=np.int64)
    for i, row in enumerate(ids):
        array[i, : len(row)] = row
    return token_batch(array, np.array([len(r) for r in ids]), None)


@pytest.mark.parametrize("arch", ARCHS)
def test_cut_reproduces_the_full_forward_at_every_layer(arch):
    texts = random_texts(50)
    tokenizer = tiny_tokenizer(texts)
    model = tiny_model(arch, len(tokenizer))
    adapter = CausalLMAdapter(model)
    batch = _batch(tokenizer, texts[:4])
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for layer in range(adapter.num_layers):
            states = adapter.capture(batch, "activation", layer)
            torch.testing.assert_close(adapter.finish(states, batch, "activation", layer), expected, atol=1e-5, rtol=1e-5)
        features = adapter.capture(batch, "logit", 0)
        torch.testing.assert_close(adapter.finish(features, batch, "logit", 0), expected, atol=1e-5, rtol=1e-5)
    # The blocks swapped out during `finish` are back: the model's own forward is unchanged.
    with torch.no_grad():
        again = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(again, expected)


def test_an_edit_at_the_cut_changes_only_later_computation():
    texts = random_texts(50)
    tokenizer = tiny_tokenizer(texts)
    adapter = CausalLMAdapter(tiny_model("llama", len(tokenizer)))
    batch = _batch(tokenizer, texts[:2])
    states = adapter.capture(batch, "activation", 1)
    edited = adapter.finish(states + 0.5, batch, "activation", 1)
    plain = adapter.finish(states, batch, "activation", 1)
    assert (edited - plain).abs().max() > 1e-3


def test_saved_model_loads_from_its_folder_with_identical_logits(tmp_path):
    folder = save_tiny_model(tmp_path / "model", "gpt2")
    adapter, tokenizer = load_causal_lm(folder)
    assert tokenizer.pad_token_id is not None
    batch = _batch(tokenizer, random_texts(3, seed=1))
    states = adapter.capture(batch, "activation", 1)
    with torch.no_grad():
        direct = adapter.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(adapter.finish(states, batch, "activation", 1), direct, atol=1e-5, rtol=1e-5)


def test_a_model_loaded_in_bfloat16_hands_float32_states_to_the_operators(tmp_path):
    """load_causal_lm(dtype="bfloat16") keeps the weights in bfloat16 (never a float32 copy); the states at the cut
    come out float32, and finishing from them is the bfloat16 model's own forward."""
    folder = save_tiny_model(tmp_path / "model")
    adapter, tokenizer = load_causal_lm(folder, dtype="bfloat16")
    assert {p.dtype for p in adapter.model.parameters()} == {torch.bfloat16}
    batch = _batch(tokenizer, random_texts(3, seed=1))
    for form in ("activation", "logit"):
        states = adapter.capture(batch, form, 1)
        assert states.dtype == torch.float32
        with torch.no_grad():
            direct = adapter.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(adapter.finish(states, batch, form, 1), direct)
    with pytest.raises(ConfigError, match="float16"):
        load_causal_lm(folder, dtype="float16")


def test_an_adapter_without_cast_refuses_another_precision():
    class Plain(SequentialClassifierAdapter):
        cast = ModelAdapter.cast

    adapter = Plain(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    assert adapter.cast(torch.float32) is adapter
    with pytest.raises(ConfigError, match="Plain does not implement cast"):
        adapter.cast(torch.bfloat16)


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        load_causal_lm(tmp_path / "empty")


def test_unknown_architecture_says_how_to_name_the_layers():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4)])

    with pytest.raises(ModelError, match="layers_path"):
        CausalLMAdapter(Odd())
    adapter = CausalLMAdapter(Odd(), layers_path="blocks")
    assert adapter.num_layers == 1


def test_layer_out_of_range_is_named():
    adapter = CausalLMAdapter(tiny_model("llama", 300, layers=3))
    with pytest.raises(ConfigError, match="layer 3 is out of range.*3 layers"):
        adapter.check_layer(3)


def test_sequential_classifier_cut():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    adapter = SequentialClassifierAdapter(model)
    batch = {"x": torch.randn(5, 8), "y": torch.tensor([0, 1, 2, 0, 1])}
    expected = model(batch["x"])
    for layer in range(adapter.num_layers - 1):
        torch.testing.assert_close(adapter.finish(adapter.capture(batch, "activation", layer), batch, "activation", layer), expected)
    torch.testing.assert_close(adapter.finish(adapter.capture(batch, "logit", 0), batch, "logit", 0), expected)
    assert adapter.example_losses(expected, batch).shape == (5,)
    with pytest.raises(ModelError, match="nn.Sequential"):
        SequentialClassifierAdapter(nn.Linear(2, 2))


def _margin(logits: torch.Tensor, target: int) -> float:
    """log p − log(1 − p) of the target class, in float64 from the definition."""
    p = torch.softmax(logits.double(), -1)[target]
    return float(torch.log(p) - torch.log1p(-p))


def test_the_log_odds_measurement_is_the_margin_and_the_loss_keeps_its_precision_near_certainty():
    """A classifier that is sure of a query (p = 1 − 3e-7): its float32 cross-entropy is rounding noise; the
    measurements are taken from the other outputs' logsumexp, so the loss is right to many digits and the log-odds is
    the margin TRAK uses."""
    adapter = SequentialClassifierAdapter(nn.Sequential(nn.Linear(2, 3)))
    logits = torch.tensor([[20.0, 5.0, 0.0], [0.3, 1.2, -0.4]])
    batch = {"x": torch.zeros(2, 2), "y": torch.tensor([0, 2])}
    exact = torch.nn.functional.cross_entropy(logits.double(), batch["y"], reduction="none")
    loss = adapter.example_measurements(logits, batch, "loss")
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, exact, rtol=1e-5, atol=0)
    float32_loss = float(adapter.example_losses(logits, batch)[0])
    assert abs(float32_loss - float(exact[0])) > 0.1 * float(exact[0])  # what the loss measured before: noise
    log_odds = adapter.example_measurements(logits, batch, "log-odds")
    assert log_odds.tolist() == pytest.approx([-_margin(logits[0], 0), -_margin(logits[1], 2)], rel=1e-6)


def test_a_language_models_measurements_average_over_the_completion_tokens():
    texts = random_texts(50)
    tokenizer = tiny_tokenizer(texts)
    adapter = CausalLMAdapter(tiny_model("llama", len(tokenizer)))
    batch = _batch(tokenizer, texts[:3])
    batch["target_mask"][:, :4] = 0  # the first positions are the prompt
    logits = adapter.finish(adapter.capture(batch, "logit", 0), batch, "logit", 0).detach()
    torch.testing.assert_close(adapter.example_measurements(logits, batch, "loss"),
                               adapter.example_losses(logits, batch).double(), rtol=1e-5, atol=1e-6)
    mask = batch["target_mask"][:, :-1].bool()
    expected = [-sum(_margin(logits[r, t], int(batch["input_ids"][r, t + 1])) for t in range(mask.shape[1]) if mask[r, t]) / int(mask[r].sum())
                for r in range(3)]
    assert adapter.example_measurements(logits, batch, "log-odds").tolist() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="measurement='margin' is not one of"):
        adapter.example_measurements(logits, batch, "margin")
