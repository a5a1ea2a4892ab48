"""The attribution benchmark's harness: its quality measures, its ground-truth cache and its runner."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.ground_truth import GroundTruth, load_or_compute, subset_masks
from benchmarks.methods import MethodSpec
from benchmarks.metrics import RemovalPlan, lds, removal_curve
from benchmarks.report import write_report
from benchmarks.runner import run_suite
from benchmarks.settings.base import ExampleSet, Setting
from benchmarks.settings.digits import DigitsSetting
from benchmarks.suites import SettingPlan, Suite


def _linear_truth(n=200, q=6, subsets=64, noise=0.0, seed=0) -> tuple[GroundTruth, np.ndarray]:
    rng = np.random.default_rng(seed)
    effects = rng.standard_normal((q, n))
    masks = subset_masks(n, subsets, 0.5, seed)
    losses = -(masks @ effects.T) + noise * rng.standard_normal((subsets, q))
    return GroundTruth(masks, losses, np.zeros(subsets), {}), effects


def test_lds_is_one_for_the_true_datamodel_and_minus_one_for_its_negation():
    truth, effects = _linear_truth()
    assert lds(effects, truth) == pytest.approx(np.ones(6))
    assert lds(-effects, truth) == pytest.approx(-np.ones(6))
    noisy = lds(effects + 3.0 * np.random.default_rng(1).standard_normal(effects.shape), truth)
    assert 0.0 < noisy.mean() < 0.9  # partial information: partial score
    assert lds(np.zeros_like(effects), truth).tolist() == [0.0] * 6  # predicting nothing scores nothing


def test_lds_refuses_scores_of_the_wrong_shape():
    truth, effects = _linear_truth()
    with pytest.raises(ValueError, match="expected"):
        lds(effects.T, truth)


class CountingSetting(Setting):
    """A linear 'model': a query's loss is minus the summed effects of the examples it was trained on."""

    name, kind = "counting", "classifier"

    def __init__(self, n=50, q=3, version=0):
        self.train = ExampleSet({"x": torch.zeros(n, 1)}, [f"t{i}" for i in range(n)])
        self.queries = ExampleSet({"x": torch.zeros(q, 1)}, [f"q{i}" for i in range(q)])
        self.effects = np.random.default_rng(0).standard_normal((q, n))
        self.version, self.calls = version, 0

    def model(self):
        return torch.nn.Identity()

    def adapter(self):
        raise NotImplementedError

    def example_losses(self, model, batch):
        return batch["x"].sum(dim=1)

    def retrain(self, masks: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        self.calls += len(masks)
        return -(masks @ self.effects.T)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}


def test_ground_truth_is_computed_once_stored_and_reused(tmp_path):
    setting = CountingSetting()
    first = load_or_compute(setting, tmp_path, num_subsets=10, fraction=0.3, block=4, progress=False)
    assert setting.calls == 10 and first.masks.sum(axis=1).tolist() == [15] * 10
    again = CountingSetting()
    second = load_or_compute(again, tmp_path, num_subsets=10, fraction=0.3, progress=False)
    assert again.calls == 0  # read from disk, not retrained
    np.testing.assert_array_equal(first.losses, second.losses)
    assert json.loads(next(tmp_path.glob("counting-*.json")).read_text())["num_subsets"] == 10
    changed = CountingSetting(version=1)  # a different model or data description never reuses old ground truth
    load_or_compute(changed, tmp_path, num_subsets=10, fraction=0.3, progress=False)
    assert changed.calls == 10


def test_ground_truth_resumes_an_interrupted_run(tmp_path):
    class Interrupted(CountingSetting):
        def retrain(self, masks, seeds):
            if self.calls >= 4:
                raise KeyboardInterrupt
            return super().retrain(masks, seeds)

    with pytest.raises(KeyboardInterrupt):
        load_or_compute(Interrupted(), tmp_path, num_subsets=10, fraction=0.3, block=4, progress=False)
    assert not list(tmp_path.glob("counting-*[0-9a-f].npz"))  # no final file that looks whole
    resumed = CountingSetting()
    truth = load_or_compute(resumed, tmp_path, num_subsets=10, fraction=0.3, block=4, progress=False)
    assert resumed.calls == 6  # only the subsets the interrupted run had not finished
    np.testing.assert_allclose(truth.losses, -(truth.masks @ resumed.effects.T))


@pytest.fixture(scope="module")
def digits():
    return DigitsSetting("smoke")


def test_digits_retraining_reproduces_the_attributed_model_and_depends_on_the_data(digits):
    model = digits.model()
    with torch.no_grad():
        losses = digits.example_losses(model, digits.queries.tensors).numpy()
        accuracy = (model(digits.queries.tensors["x"]).argmax(1) == digits.queries.tensors["y"]).float().mean()
    assert accuracy > 0.8
    full = np.ones((1, len(digits.train)), dtype=bool)
    np.testing.assert_allclose(digits.retrain(full, [digits.seed])[0], losses, atol=1e-4)
    halves = subset_masks(len(digits.train), 2, 0.5, 0)
    retrained = digits.retrain(halves, [digits.seed] * 2)
    assert np.abs(retrained[0] - retrained[1]).max() > 1e-3


def test_the_cancer_setting_retrains_its_model_and_is_sure_of_most_queries():
    """The fourth setting, a classifier nothing was tuned on, is there for the queries a model is sure of (their
    loss saturates): most of its queries have p > 0.999, and retraining on everything gives the attributed model."""
    from benchmarks.settings.cancer import CancerSetting

    cancer = CancerSetting("smoke")
    model = cancer.model()
    queries = cancer.queries.tensors
    with torch.no_grad():
        p = torch.softmax(model(queries["x"]), -1)[torch.arange(len(queries["y"])), queries["y"]]
        losses = cancer.example_losses(model, queries).numpy()
    assert (p > 0.5).float().mean() > 0.9 and (p > 0.999).float().mean() > 0.5
    full = np.ones((1, len(cancer.train)), dtype=bool)
    np.testing.assert_allclose(cancer.retrain(full, [cancer.seed])[0], losses, atol=1e-4)


def test_removing_a_querys_nearest_same_class_examples_hurts_it_more_than_random_removal(digits):
    x, y = digits.train.tensors["x"], digits.train.tensors["y"]
    qx, qy = digits.queries.tensors["x"], digits.queries.tensors["y"]
    planted = (-torch.cdist(qx, x) + 100.0 * (qy[:, None] == y[None, :])).numpy()  # same class, then nearest
    random = np.random.default_rng(0).standard_normal(planted.shape)
    plan = RemovalPlan(ks=[40], seeds=[0], queries=list(range(8)))
    informed = removal_curve(digits, planted, plan)["drop_mean"][0]
    blind = removal_curve(digits, random, plan)["drop_mean"][0]
    assert informed > blind + 0.02


@pytest.mark.slow
def test_the_runner_writes_rows_a_report_and_plots_and_records_a_failing_method(tmp_path):
    methods = (
        MethodSpec("random", "benchmarks.methods.baselines:random_scores", {}, "baseline"),
        MethodSpec("stride-logit", "benchmarks.methods.stride:stride", {"preset_name": "cpu-smoke", "form": "logit", "steps": 100}, "stride"),
        MethodSpec("broken", "benchmarks.methods.baselines:does_not_exist", {}, "peer"),
    )
    plan = SettingPlan("digits", "smoke", methods, lds_subsets=12, fraction=0.5, removal_ks=(10,), removal_queries=2,
                       threads=1, cache=tmp_path / "cache")
    path = run_suite(Suite("test", (plan,)), out=tmp_path, command="pytest")
    rows = {row["method"]: row for row in json.loads(path.read_text())}
    assert set(rows) == {"random", "stride-logit", "broken"}
    ok = rows["stride-logit"]
    for field in ("setting", "method", "lds_mean", "lds_std", "lds_per_query", "removal", "seconds", "peak_rss_mb", "machine", "commit"):
        assert field in ok, field
    assert len(ok["lds_per_query"]) == 20 and ok["removal"]["k"] == [10]
    assert ok["peak_rss_mb"] > 50 and ok["seconds"] > 0
    assert rows["broken"]["status"] == "failed" and "does_not_exist" in rows["broken"]["error"]
    report = write_report(path)
    text = report.read_text()
    assert "stride-logit" in text and "failed" in text and "Made by `pytest`" in text
    assert {p.name for p in (tmp_path / "test").glob("*.png")} == {"lds.png", "lds_vs_time.png", "removal.png"}


def _suite_methods():
    from benchmarks.suites import SUITES

    return [(suite, plan, method) for suite in SUITES.values() for plan in suite.settings for method in plan.methods]


def test_every_method_in_the_suites_accepts_the_options_it_is_given():
    """The runner calls `method.resolve()(setting, **method.options)` in a child process after the setting's model
    is built (benchmarks/runner.py `_child`), so a misspelt option in suites.py costs a whole setting build before it
    fails. Bind every method's options to the function it resolves to, the setting as the one positional argument;
    STRIDE's `**overrides` become a StrideConfig through `preset`, which rejects unknown keys and bad values."""
    import inspect

    from benchmarks.methods import MethodSpec
    from benchmarks.methods.combined import ensemble, fused
    from benchmarks.methods.stride import stride
    from benchmarks.settings import SETTINGS
    from stride_engine import preset
    from stride_engine.errors import ConfigError

    for suite, plan, method in _suite_methods():
        where = (suite.name, plan.setting, method.label)
        assert plan.setting in SETTINGS, where
        function = method.resolve()
        signature = inspect.signature(function)
        try:
            bound = signature.bind(object(), **method.options)
            bound.apply_defaults()
            extra = [p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
            if extra:  # **kwargs would take any misspelling: only STRIDE's are checked further, by its own config
                assert function in (stride, ensemble, fused), f"{method.function} takes **{extra[0]}, which binding cannot check"
                options = dict(bound.arguments[extra[0]])  # ensemble/fused pass preset_name on to stride here
                preset(bound.arguments.get("preset_name", options.pop("preset_name", "cpu-smoke")), **options)
            if function is fused:  # the peer's own options, bound to the peer
                peer = MethodSpec("peer", bound.arguments["peer"]).resolve()
                inspect.signature(peer).bind(object(), **bound.arguments["peer_options"])
        except (TypeError, ConfigError) as error:
            raise AssertionError(f"{where}: {method.function} rejects {method.options}: {error}") from None
    # Rows are keyed by (setting, label): a repeated label would silently overwrite another method's row.
    for suite in {suite.name: suite for suite, _, _ in _suite_methods()}.values():
        for plan in suite.settings:
            labels = [method.label for method in plan.methods]
            assert len(labels) == len(set(labels)), (suite.name, plan.setting)


def test_the_benchmarks_stride_scores_follow_the_recovery_settings(digits):
    """The benchmark scores every example with the run's own recovery settings, grouped recovery included."""
    from benchmarks.methods.stride import stride

    quick = dict(num_subsets=32, subsets_per_example=3, steps=20, linearity_every=10)
    plain = stride(digits, **quick)
    grouped = stride(digits, **quick, groups=4)
    assert plain.shape == grouped.shape == (len(digits.queries), len(digits.train))
    assert (plain == 0).mean() > 0.5  # the Lasso's scores are sparse
    assert (grouped != 0).all()  # every example carries its group's effect


def test_fusing_two_noisy_methods_ranks_a_planted_helper_above_what_either_finds_alone():
    """Two methods each see the one planted helper of every query through their own noise and in their own units;
    their standardised sum finds it more often than either, whatever each method's scale."""
    from benchmarks.methods.combined import fuse, standardised

    rng = np.random.default_rng(0)
    queries, n = 200, 300
    helper = rng.integers(0, n, size=queries)
    truth = np.zeros((queries, n))
    truth[np.arange(queries), helper] = 1.0
    first = 1e-6 * (truth + 0.35 * rng.standard_normal((queries, n)))  # a loss change: tiny units
    second = 50.0 * (truth + 0.35 * rng.standard_normal((queries, n)))  # a gradient product: large ones

    def found(scores):
        return float((scores.argmax(axis=1) == helper).mean())

    assert found(fuse(first, second)) > max(found(first), found(second)) + 0.1
    np.testing.assert_allclose(fuse(first, second, 1.0), standardised(first))
    np.testing.assert_allclose(fuse(1e3 * first, second), fuse(first, second))  # each method's scale drops out
    with pytest.raises(ValueError, match="shapes"):
        fuse(first, second[:, :10])
