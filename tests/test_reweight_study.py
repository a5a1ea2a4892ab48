"""The reweighting study's methods and report: planted truths for the peers' fits, the paired comparison, and the
smoke study end to end (every arm trained at equal tokens on a mixture the sampler realises)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from curate.errors import CurateError
from curate.reweight.methods.mixmin import mixmin_weights
from curate.reweight.methods.mixtures import dirichlet_mixtures, mixture_key, simplex_grid, unimax
from curate.reweight.methods.regmix import regmix_weights
from curate.reweight.study_report import beats, goals, paired, summary

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_the_grid_covers_the_simplex_with_its_vertices():
    grid = simplex_grid(4, 4)
    assert grid.shape == (35, 4) and simplex_grid(4, 5).shape == (56, 4)
    assert np.allclose(grid.sum(axis=1), 1) and (grid >= 0).all()
    assert all(any(np.array_equal(point, vertex) for point in grid) for vertex in np.eye(4))
    assert len({mixture_key(p) for p in grid}) == len(grid)  # every mixture its own dataset


def test_unimax_shares_the_budget_uniformly_under_its_epoch_cap():
    tokens = np.array([500_000.0, 150_000.0, 50_000.0, 300_000.0])
    weights = unimax(tokens, budget_tokens=400_000, max_epochs=1)
    assert weights[2] == pytest.approx(50_000 / 400_000)  # the small domain is capped at one pass
    assert weights[[0, 1, 3]] == pytest.approx(np.full(3, (1 - weights[2]) / 3))  # the others share the rest alike
    assert unimax(tokens, 100_000, 4) == pytest.approx(np.full(4, 0.25))  # no cap binds: uniform


def test_mixmin_recovers_the_share_of_items_each_domain_explains():
    # three domain models, each giving its own kind of item a far higher probability than the others do: the target's
    # loss of the mixed model is lowest at the kinds' shares of the target (60% A, 40% B, no C)
    kinds = np.array([0] * 60 + [1] * 40)
    logprobs = np.full((100, 3), -40.0)
    logprobs[np.arange(100), kinds] = -10.0
    weights, loss = mixmin_weights(logprobs)
    assert weights == pytest.approx([0.6, 0.4, 0.0], abs=0.01)
    assert loss < mixmin_weights(logprobs, iterations=0)[1]  # better than the uniform start
    with pytest.raises(CurateError, match="at least 1 item and 2 domains"):
        mixmin_weights(np.zeros((5, 1)))


def test_regmix_finds_the_domain_whose_weight_lowers_the_loss():
    prior = np.array([0.45, 0.15, 0.1, 0.3])
    mixtures = dirichlet_mixtures(prior, 48, seed=0)
    assert len(mixtures) == 48 and np.allclose(mixtures.sum(axis=1), 1)
    assert len({tuple(m) for m in mixtures}) == 48
    rng = np.random.default_rng(1)
    losses = mixtures @ np.array([3.0, 2.5, 1.0, 3.5]) + rng.normal(0, 0.02, len(mixtures))
    weights, fit = regmix_weights(mixtures, losses, prior, candidates=5000)
    assert int(np.argmax(weights)) == 2 and weights[2] > 0.5
    assert fit["train_spearman"] > 0.8
    with pytest.raises(CurateError, match="at least 4"):
        regmix_weights(mixtures[:3], losses[:3], prior)


def _rows(method_bpb: dict[str, list[float]], target: str = "t") -> list[dict]:
    return [{"target": target, "method": m, "seed": s, "target_bpb": v, "macro_bpb": 1.0 + 0.01 * v, "worst_domain_bpb": 2.0,
             "weights": {"a": 0.5, "b": 0.5}, "epochs": {"a": 1.0, "b": 1.0}, "weight_proxy_runs": 0.0}
            for m, values in method_bpb.items() for s, v in enumerate(values)]


def test_the_transfer_check_ranks_the_grid_mixtures_at_both_scales():
    from curate.reweight.study_report import grid_transfer_line

    def grid(bpb):
        return [{"target": "t", "method": "grid", "grid_point": p, "seed": 0, "target_bpb": v} for p, v in enumerate(bpb)]

    small = grid([1.0, 1.1, 1.2, 1.3, 1.4])
    # the larger proxy keeps the order but for its best two, swapped: the small scale's best mixture ranks 2nd there
    line = grid_transfer_line(small, grid([2.1, 2.0, 2.2, 2.3, 2.4]), "t")
    assert "rho = 0.90 over 5 mixtures" in line and "best mixture ranks 2 of 5" in line and "best ranks 2 at the small" in line
    assert "rho = -1.00" in grid_transfer_line(small, grid([2.4, 2.3, 2.2, 2.1, 2.0]), "t")
    assert grid_transfer_line(small, grid([2.0, 2.1]), "t") is None  # two shared mixtures give no rank correlation


def test_a_method_beats_a_reference_only_beyond_seed_noise():
    natural = [1.00, 1.02, 0.99, 1.01, 1.00]
    better = paired({s: v - 0.05 for s, v in enumerate(natural)}, dict(enumerate(natural)))
    assert better["mean"] == pytest.approx(-0.05) and beats(better)
    noisy = paired({s: v + d for s, (v, d) in enumerate(zip(natural, [-0.03, 0.03, -0.02, 0.02, -0.01]))}, dict(enumerate(natural)))
    assert not beats(noisy) and noisy["low"] < 0 < noisy["high"]
    assert paired({0: 1.0}, {0: 1.1}) is None  # one seed says nothing about noise


def test_the_goals_say_plainly_where_stride_wins_and_loses():
    natural = [1.0, 1.01, 0.99, 1.0, 1.0]
    rows = _rows({"natural": natural, "uniform": [v + 0.01 for v in natural], "stride": [v - 0.05 for v in natural],
                  "grid-best": [v - 0.10 for v in natural], "doge": [v - 0.08 for v in natural]})
    table = summary(rows)
    assert table["t"]["stride"]["regret"] == pytest.approx(0.5)
    text = "\n".join(goals(table))
    assert "**no** (1 of 1: t)" in text  # one target is not two
    assert "closes 50% of natural's gap" in text and "worse than doge" in text

    # the oracle under the same constraint on the other domains: the best grid mixture whose macro is within 1% of
    # natural's (the all-"a" point is better for the target, and costs the macro 5%)
    grid = [{"target": "t", "method": "grid", "grid_point": p, "seed": 0, "target_bpb": bpb, "macro_bpb": macro,
             "weights": {"a": a, "b": 1 - a}} for p, (a, bpb, macro) in enumerate([(1.0, 0.80, 1.06), (0.75, 0.90, 1.015), (0.5, 1.0, 1.01)])]
    text = "\n".join(goals(table, "stride", rows + grid))
    assert "closes 50% of the gap to the grid's best mixture within 1% macro (0.75 / 0.25: 0.9000" in text


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "corpus").is_dir(), reason="needs the shared corpus (../shared/data)")
def test_the_smoke_study_trains_every_arm_at_equal_tokens_on_the_mixture_it_names(tmp_path, monkeypatch):
    """`curate recipe recipes/reweight_pretraining_mix.yaml --smoke`: every method's rows at every seed, each proxy the
    same steps of the same rows, each dataset realising its weights, the grid's best point the oracle arm."""
    from curate.studies.recipe import run_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "reweight_pretraining_mix.yaml"
    monkeypatch.chdir(tmp_path)
    path = run_recipe(recipe, smoke=True, progress=False)
    everything = json.loads(path.read_text())
    assert {r["task"] for r in everything} == {"reweight"}
    rows = [r for r in everything if "diagnostic" not in r and r.get("scale") != "transfer"]
    transfer = [r for r in everything if r.get("scale") == "transfer"]
    assert {r["method"] for r in transfer} == {r["method"] for r in rows}  # every arm at the larger proxy, and the grid
    assert {r["grid_point"] for r in transfer if r["method"] == "grid"} == {r["grid_point"] for r in rows if r["method"] == "grid"}
    assert "Grid: Spearman's rho" in path.with_suffix(".md").read_text()
    stability = {r["method"]: r for r in everything if r.get("diagnostic") == "stability"}
    assert set(stability) == {"stride", "stride-guarded", "similarity", "doremi", "doge"}
    assert all(0 <= r["max_weight_difference"] <= 1 for r in stability.values())
    assert {"target", "method", "seed", "target_bpb", "domain_bpb", "weights"} <= set(rows[0])
    methods = {r["method"] for r in rows}
    assert {"natural", "uniform", "unimax", "stride", "stride-average", "stride-worst", "stride-operators", "stride-guarded",
            "similarity", "similarity-guarded", "doremi", "doge", "mixmin", "regmix", "grid-best", "grid"} == methods
    out = tmp_path / "runs" / "reweight_pretraining_mix-smoke"
    operators = json.loads((out / "reweight" / "weights" / "mixed" / "stride-operators" / "manifest.json").read_text())
    assert (operators["weights"]["aggregation"], operators["request"]["mode"]) == ("domain-operators", "average")
    guarded = json.loads((out / "reweight" / "weights" / "mixed" / "stride-guarded" / "manifest.json").read_text())
    assert guarded["weights"]["rule"]["guard"] == "macro" and guarded["weights"]["guard"]["predicted_after"] <= 1e-9
    assert "`stride-guarded`" in path.with_suffix(".md").read_text()
    # Planted by the target's construction: `mixed` holds tales, Shakespeare and GSM8K items and no Wikipedia, so the
    # domain-operators reading, guarded or not, must raise the three domains it holds above natural and cut Wikipedia
    natural = {d["domain"]: d["natural"] for d in operators["weights"]["domains"]}
    for manifest in (operators, guarded):
        weights = {d["domain"]: d["weight"] for d in manifest["weights"]["domains"]}
        assert weights["wiki"] < natural["wiki"], weights
        assert all(weights[d] > natural[d] for d in ("tales", "shakespeare", "math")), weights
    for row in rows + transfer:
        assert sum(row["weights"].values()) == pytest.approx(1.0, abs=1e-3)
        training = json.loads((out / "proxies" / row["job"] / "training.json").read_text())
        assert (training["steps"], training["batch_size"], training["seq_len"]) == (20, 8, 128)  # equal tokens
        # the sampler realises the weights: each domain's passes over its documents are the planned ones, up to the
        # draws (a domain of weight 0 gets none)
        planned = json.loads((out / "reweight" / "mixtures" / row["job"].split("/")[1] / "manifest.json").read_text())
        for domain in planned["weights"]["domains"]:
            assert row["epochs"][domain["domain"]] == pytest.approx(domain["epochs"], abs=0.4)
            if domain["weight"] == 0:
                assert row["epochs"][domain["domain"]] == 0
    grid = [r for r in rows if r["method"] == "grid"]
    means: dict[int, list[float]] = {}
    for r in grid:
        means.setdefault(r["grid_point"], []).append(r["target_bpb"])
    best = min(means, key=lambda p: np.mean(means[p]))
    oracle = next(r for r in rows if r["method"] == "grid-best")
    assert oracle["grid_point"] == best
    report = path.with_suffix(".md").read_text()
    assert "## The goals, for STRIDE's weights" in report and "## Transfer to a larger proxy" in report
    assert "## Recovery groups as domains" in report and path.with_suffix(".png").stat().st_size > 0
    groups = next(r for r in everything if r.get("diagnostic") == "groups")
    # the smoke run asks for 4 groups over chunks; a document's majority group is one of them
    assert groups["chunk_groups"] == 4 and 1 <= groups["groups"] <= 4
