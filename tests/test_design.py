"""The membership design: d subsets per example, seeded, saved and reloaded exactly."""

import numpy as np
import pytest

from stride_engine import ConfigError, Membership, StrideConfig, random_membership


def test_every_example_is_in_exactly_d_distinct_subsets():
    design = random_membership(num_examples=500, num_subsets=40, subsets_per_example=5, seed=3)
    dense = design.matrix.toarray()
    assert dense.shape == (40, 500)
    assert set(np.unique(dense)) == {0.0, 1.0}
    assert (dense.sum(axis=0) == 5).all()
    # Subsets are balanced around n·d/K = 62.5 members (a random regular design, not a degenerate one).
    sizes = dense.sum(axis=1)
    assert sizes.min() > 35 and sizes.max() < 95
    assert design.matrix.indices.dtype == np.int32


def test_design_is_seeded_and_round_trips(tmp_path):
    first = random_membership(300, 30, 4, seed=1)
    again = random_membership(300, 30, 4, seed=1)
    other = random_membership(300, 30, 4, seed=2)
    assert (first.matrix != again.matrix).nnz == 0
    assert (first.matrix != other.matrix).nnz > 0
    first.save(tmp_path / "design.npz")
    loaded = Membership.load(tmp_path / "design.npz")
    assert (loaded.matrix != first.matrix).nnz == 0 and loaded.seed == 1 and loaded.subsets_per_example == 4
    np.testing.assert_array_equal(loaded.members(0), np.flatnonzero(first.matrix.toarray()[0]))


def test_a_draw_with_an_empty_subset_is_redrawn_from_the_same_seed():
    # 469 examples in 512 subsets at d = 8 (the cancer benchmark): seed 2's first draw leaves a subset empty.
    first_draw = np.random.default_rng(2)
    from stride_engine.design import _draw

    assert (np.diff(_draw(first_draw, 469, 512, 8).indptr) == 0).any()
    design = random_membership(469, 512, 8, seed=2)
    assert (np.diff(design.matrix.indptr) > 0).all() and (design.matrix.sum(axis=0) == 8).all()
    assert (design.matrix != random_membership(469, 512, 8, seed=2).matrix).nnz == 0  # still fixed by its seed
    # A seed whose first draw had no empty subset keeps exactly that draw (runs fitted before redraws are unchanged).
    assert (random_membership(469, 512, 8, seed=0).matrix != _draw(np.random.default_rng(0), 469, 512, 8)).nnz == 0
    with pytest.raises(ConfigError, match="received no example .* in each of 20 draws"):
        random_membership(50, 512, 2, seed=0)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_subsets=4, subsets_per_example=5), "cannot exceed num_subsets"),
        (dict(num_subsets=0), "num_subsets must be a positive integer"),
        (dict(subsets_per_example=0), "subsets_per_example must be a positive integer"),
        (dict(num_subsets=1, subsets_per_example=1), "at least 2"),
        (dict(form="sideways"), "form='sideways' is not one of"),
        (dict(rank=-1), "rank must be a positive integer"),
        (dict(form="logit", loss_positions=-3), "loss_positions must be 0"),
        (dict(form="activation", loss_positions=32), "loss_positions needs form='logit'"),
        (dict(design_seed=-1), "design_seed must be a non-negative integer or null"),
    ],
)
def test_out_of_range_configuration_is_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        StrideConfig().replace(**changes)


def test_too_many_subsets_for_the_corpus_is_named():
    with pytest.raises(ConfigError, match="received no example"):
        random_membership(num_examples=3, num_subsets=50, subsets_per_example=1, seed=0)


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="unknown configuration key.*'rnak'"):
        StrideConfig().replace(rnak=4)


def test_a_design_seed_holds_the_design_while_seed_moves_the_operators(tmp_path):
    """Several fits on one design (an ensemble over the operators' start): with `design_seed` set, `seed` changes the
    trained operators and not the membership; without it, `seed` draws the design too."""
    import torch
    from safetensors.torch import load_file
    from torch import nn

    from stride_engine import Examples, SequentialClassifierAdapter, Stride, preset
    from stride_engine.config import stage_fields

    torch.manual_seed(0)
    x = torch.randn(120, 6)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    train = Examples({"x": x, "y": y}, [f"ex{i}" for i in range(120)], np.arange(120), [None] * 120)
    fits = {}
    for name, changes in {"a": dict(seed=0, design_seed=5), "b": dict(seed=1, design_seed=5), "c": dict(seed=1)}.items():
        config = preset("cpu-smoke", num_subsets=32, subsets_per_example=4, steps=5, rank=2, linearity_weight=0.0, **changes)
        Stride(SequentialClassifierAdapter(model), config, tmp_path / name, progress=False).fit(train)
        fits[name] = (Membership.load(tmp_path / name / "design.npz").matrix, load_file(str(tmp_path / name / "operators" / "bank.safetensors")))
    assert (fits["a"][0] != fits["b"][0]).nnz == 0 and (fits["a"][0] != random_membership(120, 32, 4, seed=5).matrix).nnz == 0
    assert not torch.equal(fits["a"][1]["basis.weight"], fits["b"][1]["basis.weight"])
    assert (fits["b"][0] != fits["c"][0]).nnz > 0
    # a run fitted before the field existed (design_seed null) keeps its fingerprint
    assert "design_seed" not in stage_fields(StrideConfig(), "design") and stage_fields(StrideConfig(design_seed=3), "design")["design_seed"] == 3
