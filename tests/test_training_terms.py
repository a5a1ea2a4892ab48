"""The operator-training terms: the per-example linearity residual, its configuration check, its gradient, and the
masked (lazy) Adam update that leaves undrawn operators alone."""

import numpy as np
import pytest
import torch
from torch import nn

from stride_engine import SequentialClassifierAdapter, preset
from stride_engine.design import random_membership
from stride_engine.errors import ConfigError
from stride_engine.training import StateCache, _Steps, _sketch, linearity_residual, new_bank, train_operators

# A 3-class MLP on 60 points: 16 subsets, 4 drawn per step, so 12 operators sit out every step.
TINY = dict(form="logit", num_subsets=16, subsets_per_example=2, rank=2, operators_per_step=4, fidelity_batch=4,
            stability_batch=4, linearity_operators=12, linearity_batch=4, sketch_dim=4, linearity_every=2,
            checkpoint_every=1000)


class Interrupt(Exception):
    pass


def _problem(**changes):
    config = preset("cpu-smoke", **{**TINY, **changes})
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 6, generator=generator), torch.randint(0, 3, (60,), generator=generator)
    torch.manual_seed(0)
    adapter = SequentialClassifierAdapter(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)))
    batch = {"x": x, "y": y}
    cache = StateCache(adapter.capture(batch, "logit", 0), batch)
    membership = random_membership(60, config.num_subsets, config.subsets_per_example, seed=config.seed)
    bank = new_bank(config, config.num_subsets, cache.states.shape[-1], 3)
    return adapter, cache, membership, bank, config


# ------------------------------------------------------------------------------------------------ linearity


def _design(operators=12, columns=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(operators, columns, generator=generator, dtype=torch.float64), generator


def test_per_example_additive_responses_have_no_residual():
    design, generator = _design()
    weights = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    intercepts = torch.randn(1, 5, generator=generator, dtype=torch.float64)
    responses = design @ weights + intercepts  # every probe example's column is additive in the design
    assert linearity_residual(design, responses, 1e-9).abs().max() < 1e-6


def test_an_additive_mean_does_not_hide_non_additive_examples():
    """Each example's responses are off the design, their mean over the probe batch is on it: the old term (the
    residual of the mean) sees nothing, the per-example term sees all of it."""
    design, generator = _design()
    basis = torch.cat([torch.ones(12, 1, dtype=torch.float64), design], dim=1)
    noise = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    noise -= basis @ torch.linalg.lstsq(basis, noise).solution  # columns orthogonal to the intercept and the design
    noise -= noise.mean(dim=1, keepdim=True)  # and zero on average over the probe batch (still orthogonal)
    responses = design @ torch.randn(3, 1, generator=generator, dtype=torch.float64) + noise
    old = linearity_residual(design, responses.mean(dim=1), 1e-9).pow(2).mean()  # mean, then residual
    new = linearity_residual(design, responses, 1e-9).pow(2).mean()
    print(f"mean squared residual: mean-then-residual {old:.2e}, per example {new:.3f} (= the off-design part {noise.pow(2).mean():.3f})")
    assert old < 1e-12
    assert torch.isclose(new, noise.pow(2).mean())
    assert new > 0.1


def test_a_sketch_as_wide_as_the_operators_less_one_fits_anything():
    """Why the configuration check: S operators, a free intercept and S - 1 sketch columns fit any responses."""
    design, generator = _design(operators=12, columns=11)
    responses = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    assert linearity_residual(design, responses, 1e-9).abs().max() < 1e-6
    assert linearity_residual(design[:, :10], responses, 1e-9).pow(2).mean() > 1e-3


@pytest.mark.parametrize("sketch_dim", [24, 32, 23])
def test_a_sketch_too_wide_for_the_linearity_operators_is_refused(sketch_dim):
    with pytest.raises(ConfigError, match=rf"sketch_dim \({sketch_dim}\).*linearity_operators - 1 \(24 - 1\)"):
        preset("cpu-smoke", linearity_operators=24, sketch_dim=sketch_dim)
    preset("cpu-smoke", linearity_operators=24, sketch_dim=sketch_dim, linearity_weight=0.0)  # no term, nothing to check
    preset("cpu-smoke", linearity_operators=24, sketch_dim=22)


def test_every_preset_and_benchmark_configuration_validates():
    from benchmarks.methods.stride import stride
    from benchmarks.suites import SUITES
    from stride_engine.config import PRESETS

    for name in PRESETS:
        preset(name)
    checked = 0
    for suite in SUITES.values():
        for plan in suite.settings:
            for method in plan.methods:
                if method.resolve() is stride:
                    options = dict(method.options)
                    preset(options.pop("preset_name", "cpu-smoke"), **options)
                    checked += 1
    assert checked > 20


def test_the_linearity_term_trains_the_bank_and_is_logged(tmp_path):
    adapter, cache, membership, bank, config = _problem(fidelity_weight=1e-9, stability_weight=0.0)
    with torch.no_grad():  # a_k = 0 answers 0 everywhere, a perfectly additive (and gradient-free) start
        bank.coefficients.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    trainer = _Steps(adapter, cache, membership, bank, config, 0, _sketch(membership, config))
    value, sampled = trainer.linearity(np.random.default_rng(0))
    grad = bank.coefficients.grad.abs().sum(dim=(1, 2))
    assert value > 0 and len(sampled) == config.linearity_operators
    assert (grad[sampled] > 0).all() and (np.delete(grad.numpy(), sampled) == 0).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bank.basis.parameters())

    log = train_operators(adapter, cache, membership, bank, config.replace(steps=6), 0, tmp_path / "ckpt", progress=False)
    curve = np.array(log.curves["linearity"])
    assert np.isfinite(curve[::2]).all() and np.isnan(curve[1::2]).all()  # every `linearity_every` = 2 steps
    assert (curve[::2] > 0).all()


# ------------------------------------------------------------------------------------------------ optimisers


def _step_by_step(optimizer: str, steps: int, folder):
    """The a_k after each step of a real training run, and the operators each step drew."""
    adapter, cache, membership, bank, config = _problem(optimizer=optimizer, linearity_weight=0.0, steps=steps)
    snapshots = [bank.coefficients.detach().clone()]
    train_operators(adapter, cache, membership, bank, config, 0, folder, progress=False,
                    on_step=lambda step: snapshots.append(bank.coefficients.detach().clone()))
    trainer = _Steps(adapter, cache, membership, bank, config, 0, None)
    drawn = [np.unique(trainer._draw(np.random.default_rng([config.seed, step]))[1]) for step in range(steps)]
    return snapshots, drawn


def _moved(before: torch.Tensor, after: torch.Tensor) -> np.ndarray:
    return (before != after).flatten(1).any(dim=1).numpy()


def test_masked_adam_leaves_undrawn_operators_bit_identical(tmp_path):
    snapshots, drawn = _step_by_step("masked-adam", 6, tmp_path)
    for step, rows in enumerate(drawn):
        moved = _moved(snapshots[step], snapshots[step + 1])
        assert moved[rows].all(), step
        assert not np.delete(moved, rows).any(), step  # not one bit of an undrawn a_k changed


def test_plain_adam_moves_undrawn_operators_on_their_momentum(tmp_path):
    snapshots, drawn = _step_by_step("adam", 6, tmp_path)
    drifted = 0
    for step in range(1, len(drawn)):
        seen_before = np.setdiff1d(np.unique(np.concatenate(drawn[:step])), drawn[step])  # momentum, no gradient
        drifted += _moved(snapshots[step], snapshots[step + 1])[seen_before].sum()
    assert drifted > 10


@pytest.mark.parametrize("optimizer", ["adam", "masked-adam"])
def test_an_interrupted_training_resumes_to_the_same_weights(optimizer, tmp_path):
    def fit(folder, on_step=None):
        adapter, cache, membership, bank, config = _problem(optimizer=optimizer, steps=9, checkpoint_every=3)
        train_operators(adapter, cache, membership, bank, config, 0, folder, progress=False, on_step=on_step)
        return bank

    straight = fit(tmp_path / "straight")

    def crash(step):
        if step == 5:  # after the checkpoint at step 3
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(tmp_path / "resumed", on_step=crash)
    resumed = fit(tmp_path / "resumed")
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


# ----------------------------------------------------------------------------------------------- full batch


def test_a_full_batch_step_trains_every_operator_on_exactly_its_members(tmp_path):
    adapter, cache, membership, bank, config = _problem(full_batch=True, stability_batch=3)
    trainer = _Steps(adapter, cache, membership, bank, config, 0, None)
    rows, operators, is_member = trainer._draw(np.random.default_rng(0))
    for subset in range(membership.num_subsets):
        mine = operators == subset
        assert sorted(rows[mine & is_member]) == sorted(membership.members(subset))  # all members, each once
        outsiders = rows[mine & ~is_member]
        assert len(outsiders) <= 3 and not np.isin(outsiders, membership.members(subset)).any()
    # One step moves every operator's coefficients (masked Adam moves only what a step trained).
    adapter, cache, membership, bank, config = _problem(full_batch=True, optimizer="masked-adam", steps=1, linearity_weight=0.0)
    before = bank.coefficients.detach().clone()
    train_operators(adapter, cache, membership, bank, config, 0, tmp_path / "ckpt", progress=False)
    assert (bank.coefficients.detach() != before).any(dim=1).all()


def test_full_batch_is_part_of_the_operators_fingerprint_and_must_be_a_flag():
    from stride_engine.config import stage_fields

    assert "full_batch" not in stage_fields(preset("default"), "operators")  # runs fitted before it stay current
    assert stage_fields(preset("default", full_batch=True), "operators")["full_batch"] is True
    with pytest.raises(ConfigError, match="full_batch must be true or false"):
        preset("default", full_batch="yes")
