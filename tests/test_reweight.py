"""Mixture reweighting: the rule on planted per-domain influence, the sampler, and `curate reweight` on a fitted run.

Planted truth at two levels: documents whose influence is set by hand (one domain helps, one is noise, one hurts),
and the demo corpus, whose planted facts are stated only in its `stories` and `encyclopedia` documents, so a target
of those facts must take weight from the `recipes` and `arithmetic` domains, and a target of arithmetic problems
must give weight to `arithmetic`."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest
from click.testing import CliRunner
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from curate.cli import main
from curate.demo.corpus import _arithmetic
from curate.errors import CurateError
from curate.reweight import MixtureRule, MixtureSampler, ReweightRequest, run_reweight
from curate.reweight.steps import WEIGHTS_FILE, copies_of
from curate.reweight.weights import (WHOLE_TARGET, DomainInfluence, cap_epochs, check_user_weights, domain_influence,
                                     mixture_weights)

from fake_slurm import FakeSlurm
from tiny import write_jsonl, written_ids


def _documents(effects: dict[str, float], counts: dict[str, int], noise: float, seed: int = 0) -> pl.DataFrame:
    """Documents of 100 tokens each whose influence is the domain's effect per token x 100, plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for domain, count in counts.items():
        for i in range(count):
            rows.append({"doc_id": f"{domain}-{i}", "domain": domain, "tokens": 100,
                         "influence": 100 * effects[domain] + noise * rng.standard_normal()})
    return pl.DataFrame(rows)


COUNTS = {"helps": 200, "noise": 400, "hurts": 200, "other": 200}


def test_the_domain_that_helps_gains_weight_and_the_one_that_hurts_loses_it():
    table = _documents({"helps": 1.0, "noise": 0.0, "hurts": -1.0, "other": 0.0}, COUNTS, noise=5.0)
    influence = domain_influence(table, {WHOLE_TARGET: "influence"})
    made = mixture_weights(influence, MixtureRule(weighting="tilt"), budget_tokens=int(influence.tokens.sum()))
    weights = dict(zip(influence.domains, made["weights"]))
    natural = dict(zip(influence.domains, made["natural"]))
    assert weights["helps"] > 1.5 * natural["helps"] and weights["hurts"] < 0.7 * natural["hurts"]
    assert abs(weights["noise"] / natural["noise"] - weights["other"] / natural["other"]) < 0.1  # the same evidence
    assert made["weights"].sum() == pytest.approx(1.0)


def test_proportional_weighting_gives_each_domain_its_share_of_the_total_influence():
    # every domain helps as much per token: the log-law optimum is the corpus as it is (natural), with no threshold
    counts = {"a": 100, "b": 300, "c": 600}
    even = domain_influence(_documents({d: 1.0 for d in counts}, counts, noise=0.0), {WHOLE_TARGET: "influence"})
    rule = MixtureRule(weighting="proportional")
    made = mixture_weights(even, rule, budget_tokens=int(even.tokens.sum()))
    np.testing.assert_allclose(made["weights"], made["natural"])
    # a domain that hurts gets no share of its own, only the smoothing's part of its prior
    mixed = domain_influence(_documents({"a": 3.0, "b": 1.0, "c": -1.0}, counts, noise=0.0), {WHOLE_TARGET: "influence"})
    uncapped = MixtureRule(weighting="proportional", max_epochs=10)
    weights = dict(zip(mixed.domains, mixture_weights(mixed, uncapped, budget_tokens=int(mixed.tokens.sum()))["weights"]))
    # totals: a 3 x 100 docs, b 1 x 300 docs: half each
    assert weights["c"] == pytest.approx(0.2 * 0.6)
    assert weights["a"] == pytest.approx(0.8 * 0.5 + 0.2 * 0.1)
    assert weights["b"] == pytest.approx(0.8 * 0.5 + 0.2 * 0.3)


def test_proportional_weighting_averages_the_parts_optimal_mixtures_and_has_no_worst_mode():
    # two parts, each helped only by its own domain, one part's loss moved ten times as far: each still gets half
    counts = {"a": 500, "b": 500}
    table = _documents({"a": 10.0, "b": 0.0}, counts, noise=0.0).rename({"influence": "part_a"})
    table = table.with_columns(part_b=pl.when(pl.col("domain") == "b").then(100.0).otherwise(0.0))
    table = table.with_columns(whole=pl.col("part_a") + pl.col("part_b"))
    influence = domain_influence(table, {WHOLE_TARGET: "whole", "a": "part_a", "b": "part_b"})
    made = mixture_weights(influence, MixtureRule(weighting="proportional", mode="average"), int(influence.tokens.sum()))
    np.testing.assert_allclose(made["weights"], [0.5, 0.5])
    target = mixture_weights(influence, MixtureRule(weighting="proportional"), int(influence.tokens.sum()))["weights"]
    assert target[0] == pytest.approx(0.8 * 10 / 11 + 0.1)  # the whole target: the louder part's domain leads
    with pytest.raises(CurateError, match="needs --weighting tilt"):
        MixtureRule(weighting="proportional", mode="worst").check()
    with pytest.raises(CurateError, match="weighting"):
        MixtureRule(weighting="linear").check()


def test_a_target_no_domain_helps_keeps_the_prior_and_is_marked_as_such():
    """Every domain's dose raises the target's loss: the proportional weighting has nothing to move the prior by, so it
    keeps it, and names the parts it kept it for (the report and the CLI say the weights are no finding then)."""
    counts = {"a": 100, "b": 300, "c": 600}
    harmful = domain_influence(_documents({"a": -1.0, "b": -3.0, "c": -0.5}, counts, noise=0.0), {WHOLE_TARGET: "influence"})
    made = mixture_weights(harmful, MixtureRule(weighting="proportional"), int(harmful.tokens.sum()))
    np.testing.assert_allclose(made["weights"], made["natural"])
    assert made["unhelped"] == [WHOLE_TARGET]
    # two parts, one helped by "a", the other by none: only the second is named, and it keeps its prior share
    table = _documents({"a": 1.0, "b": -1.0, "c": -1.0}, counts, noise=0.0).rename({"influence": "p1"})
    table = table.with_columns(p2=-pl.col("p1").abs(), whole=pl.col("p1"))
    parts = domain_influence(table, {WHOLE_TARGET: "whole", "p1": "p1", "p2": "p2"})
    made = mixture_weights(parts, MixtureRule(weighting="proportional", mode="average", smoothing=0.0, max_epochs=100), 1000)
    assert made["unhelped"] == ["p2"]
    np.testing.assert_allclose(made["weights"], 0.5 * np.array([1.0, 0, 0]) + 0.5 * made["natural"])
    helped = mixture_weights(parts, MixtureRule(weighting="proportional"), 1000)
    assert helped["unhelped"] == [] and mixture_weights(harmful, MixtureRule(weighting="tilt"), 1000)["unhelped"] == []


def _guarded_influence(target: list[float], tokens: list[float], on_domains: np.ndarray | None = None) -> DomainInfluence:
    d = len(tokens)
    return DomainInfluence(tuple("abcd"[:d]), np.array(tokens, float), np.ones(d), (WHOLE_TARGET,),
                           np.array(target, float)[:, None], np.full((d, 1), 1e-3), on_domains)


def _macro_change(weights: np.ndarray, natural: np.ndarray) -> float:
    """The macro guard's predicted change of the domains' mean loss (positive: worse than natural)."""
    return float(-np.log(weights / natural).mean())


def test_the_macro_guard_buys_the_targets_gain_only_where_the_other_domains_lose_nothing():
    # every domain's own loss falls alike with the log of its share: the domains' mean loss is lowest at the uniform
    # mixture, and no worse than natural's wherever the weights' geometric mean is no lower than natural's
    tokens, natural = [600.0, 200.0, 200.0], np.array([0.6, 0.2, 0.2])
    free = dict(weighting="proportional", smoothing=0.0, max_epochs=100)
    guarded = MixtureRule(**free, guard="macro")
    # a target helped only by the small domain "b": unguarded it takes everything; guarded, "b" gains as far as the
    # domains' mean loss allows, and not a bit further
    small = _guarded_influence([0.0, 1.0, 0.0], tokens)
    np.testing.assert_allclose(mixture_weights(small, MixtureRule(**free), 1000)["weights"], [0, 1, 0], atol=1e-12)
    made = mixture_weights(small, guarded, 1000)
    weights, guard = made["weights"], made["guard"]
    np.testing.assert_allclose(guard["shares"], [1 / 3, 1 / 3, 1 / 3])
    assert 0 < guard["alpha"] < 1 and 0.2 < weights[1] < 1 and guard["predicted_before"] is None  # "a", "c" left out
    assert _macro_change(weights, natural) == pytest.approx(0, abs=1e-9)
    less = (1 - 0.99 * guard["alpha"]) * np.array([0, 1, 0]) + 0.99 * guard["alpha"] * np.full(3, 1 / 3)
    assert _macro_change(less, natural) > 0  # any closer to the target's optimum and the domains lose
    # a target helped only by "a", which the corpus already over-weights against the domains' own optimum: any more
    # of it costs the others, so the guard keeps the corpus as it is
    large = _guarded_influence([1.0, 0.0, 0.0], tokens)
    np.testing.assert_allclose(mixture_weights(large, guarded, 1000)["weights"], natural, atol=1e-6)
    # a target whose own optimum already serves the domains better than natural: nothing to hold back
    broad = _guarded_influence([0.2 / 600, 0.4 / 200, 0.4 / 200], tokens)  # per token: shares .2, .4, .4
    made = mixture_weights(broad, guarded, 1000)
    assert made["guard"]["alpha"] == 0 and made["guard"]["predicted_before"] < 0
    np.testing.assert_allclose(made["weights"], [0.2, 0.4, 0.4])


def test_the_measured_guard_reads_each_domains_slope_from_its_doses_on_held_out_text():
    tokens = [600.0, 200.0, 200.0]
    measured = MixtureRule(weighting="proportional", smoothing=0.0, max_epochs=100, guard="measured")
    # each dose helps only its own text, the same per document: the same slopes as the macro guard assumes
    alike = _guarded_influence([0.0, 1.0, 0.0], tokens, np.diag([1 / 600, 1 / 200, 1 / 200]))
    np.testing.assert_allclose(mixture_weights(alike, measured, 1000)["weights"],
                               mixture_weights(alike, MixtureRule(**{**measured.__dict__, "guard": "macro"}), 1000)["weights"])
    # each helping its own text in proportion to its tokens: natural is the domains' own optimum, and the guard keeps
    # it whatever the target wants
    even = _guarded_influence([0.0, 1.0, 0.0], tokens, np.eye(3) * 0.01)
    np.testing.assert_allclose(mixture_weights(even, measured, 1000)["weights"], [0.6, 0.2, 0.2], atol=1e-6)
    # no held-out measurement: refused, naming the reading that makes one
    with pytest.raises(CurateError, match="domain-operators"):
        mixture_weights(_guarded_influence([1.0, 0.0, 0.0], tokens), measured, 1000)
    # no dose helps any held-out text (a model that memorised its corpus): the rule's mixture stands, and says why
    harmful = _guarded_influence([1.0, 0.0, 0.0], tokens, -np.ones((3, 3)))
    made = mixture_weights(harmful, measured, 1000)
    np.testing.assert_allclose(made["weights"], [1.0, 0.0, 0.0])
    assert made["guard"]["alpha"] == 0 and "nothing to guard" in made["guard"]["note"]


def test_domains_that_differ_only_by_noise_keep_the_prior():
    table = _documents({d: 0.0 for d in COUNTS}, COUNTS, noise=5.0, seed=3)
    influence = domain_influence(table, {WHOLE_TARGET: "influence"})
    for prior in ("natural", "uniform"):
        made = mixture_weights(influence, MixtureRule(prior=prior, weighting="tilt"), budget_tokens=int(influence.tokens.sum()))
        assert np.abs(made["weights"] - made[prior]).max() < 0.02


def test_no_domain_is_repeated_beyond_the_epoch_cap():
    table = _documents({"helps": 5.0, "noise": 0.0, "hurts": -1.0, "other": 0.0}, COUNTS, noise=1.0)
    influence = domain_influence(table, {WHOLE_TARGET: "influence"})
    budget = int(influence.tokens.sum())
    made = mixture_weights(influence, MixtureRule(eta=5.0, smoothing=0.0, max_epochs=1.5, weighting="tilt"), budget)
    epochs = made["weights"] * budget / influence.tokens
    assert epochs.max() <= 1.5 + 1e-9 and made["weights"].sum() == pytest.approx(1.0)
    assert epochs[list(influence.domains).index("helps")] == pytest.approx(1.5)  # the helpful domain fills its cap
    with pytest.raises(CurateError, match="epochs"):
        cap_epochs(made["weights"], influence.tokens, 10 * budget, 4.0)


def test_worst_mode_serves_the_part_the_average_neglects():
    """Part a is helped a lot by domain A; part b a little by domain B. `average` follows a; `worst` lifts B."""
    rows = []
    rng = np.random.default_rng(0)
    for domain, (effect_a, effect_b) in {"A": (3.0, 0.0), "B": (0.0, 1.0), "C": (0.0, 0.0)}.items():
        for i in range(300):
            rows.append({"doc_id": f"{domain}{i}", "domain": domain, "tokens": 100, "a": 100 * effect_a + rng.standard_normal(),
                         "b": 100 * effect_b + rng.standard_normal()})
    table = pl.DataFrame(rows).with_columns(((pl.col("a") + pl.col("b")) / 2).alias("whole"))
    influence = domain_influence(table, {WHOLE_TARGET: "whole", "a": "a", "b": "b"})
    budget = int(influence.tokens.sum())
    average = mixture_weights(influence, MixtureRule(mode="average", weighting="tilt"), budget)
    worst = mixture_weights(influence, MixtureRule(mode="worst", weighting="tilt"), budget)
    b = influence.domains.index("B")
    assert worst["weights"][b] > average["weights"][b]
    assert worst["part_weights"][influence.parts.index("b")] > 0.5


class _MeasuredRun:
    """What design_influence reads of a run: its chunk table, its design and each query set's responses."""

    def __init__(self, root: Path, chunks: pl.DataFrame):
        self.root, self._chunks = root, chunks

    def chunks(self) -> pl.DataFrame:
        return self._chunks

    def responses(self, name, queries) -> np.ndarray:  # measured already: on disk
        return np.load(self.root / "responses" / f"{name}.npy")


def test_domain_regression_reads_each_parts_own_domain_off_the_design(tmp_path):
    """Responses planted from per-token domain effects: part `a` is helped by domain A, part `b` hurt by domain B
    and helped by C; D does nothing. Chunks of unequal length and domains of unequal size. The regression finds each
    part's effects, `target` follows the queries' majority, `average` gives both parts a say."""
    from stride_engine.design import random_membership
    from curate.core.targets import Target, part_sets
    from curate.reweight.domain_effects import design_influence
    from stride_engine import Queries

    rng = np.random.default_rng(0)
    domains = np.repeat(["A", "B", "C", "D"], [600, 300, 300, 800])
    lengths = rng.integers(30, 129, len(domains))
    chunks = pl.DataFrame({"chunk_id": np.arange(len(domains)), "doc_id": [f"{d}{i}" for i, d in enumerate(domains)],
                           "token_start": 0, "token_end": lengths, "domain": domains})
    membership = random_membership(len(domains), 200, 6, seed=0)
    membership.save(tmp_path / "design.npz")
    effect = {"a": {"A": 2e-5, "B": 0.0, "C": 0.0, "D": 0.0}, "b": {"A": 0.0, "B": -2e-5, "C": 2e-5, "D": 0.0}}
    labels = {"a": 30, "b": 10}
    ids, parts = [], []
    for part, count in labels.items():
        ids += [f"{part}-{i}" for i in range(count)]
        parts += [part] * count
    queries = Queries(ids, [""] * len(ids), ["x"] * len(ids))
    target = Target("planted", "planted.jsonl", queries, len(ids), 0, 0, tuple(parts))
    (tmp_path / "responses").mkdir()
    for part, (name, part_queries) in part_sets(target).items():
        per_chunk = np.array([effect[part][d] for d in domains]) * lengths
        y = membership.matrix @ per_chunk
        np.save(tmp_path / "responses" / f"{name}.npy", y[None, :] + 1e-3 * rng.standard_normal((len(part_queries), 200)))
    documents = chunks.select("doc_id", "domain", pl.col("token_end").alias("tokens"))
    influence = design_influence(_MeasuredRun(tmp_path, chunks), target, documents, by_part=True)
    assert influence.domains == ("A", "B", "C", "D") and influence.parts == (WHOLE_TARGET, "a", "b")
    a, b = influence.parts.index("a"), influence.parts.index("b")
    assert np.argmax(influence.per_token[:, a]) == 0
    assert np.argmax(influence.per_token[:, b]) == 2 and np.argmin(influence.per_token[:, b]) == 1
    assert np.allclose(influence.per_token[:, b], [0.0, -2e-5, 2e-5, 0.0], atol=2e-6)  # the planted effects per token
    assert np.allclose(influence.per_token[:, a], [2e-5, 0.0, 0.0, 0.0], atol=2e-6)
    budget = int(influence.tokens.sum())
    whole = mixture_weights(influence, MixtureRule(mode="target", weighting="tilt"), budget)["weights"]
    average = mixture_weights(influence, MixtureRule(mode="average", weighting="tilt"), budget)["weights"]
    natural = influence.tokens / influence.tokens.sum()
    assert whole[0] > natural[0] and whole[0] > average[0]  # the majority part's domain, most of all in `target`
    assert average[2] > natural[2] > average[1]  # with an equal say, part b's helper gains and its harm loses


def test_bad_mixtures_and_settings_are_refused_with_the_problem_named():
    with pytest.raises(CurateError, match="sum to 1"):
        check_user_weights({"a": 0.5, "b": 0.4}, ("a", "b"))
    with pytest.raises(CurateError, match="no weight for domains"):
        check_user_weights({"a": 1.0}, ("a", "b"))
    for rule, message in ((MixtureRule(eta=0), "eta"), (MixtureRule(eta=-1), "eta"), (MixtureRule(mode="worst"), "needs --weighting tilt"), (MixtureRule(mode="best"), "mode"),
                          (MixtureRule(smoothing=2), "smoothing")):
        with pytest.raises(CurateError, match=message):
            rule.check()
    table = _documents({d: 0.0 for d in COUNTS}, COUNTS, noise=1.0)
    with pytest.raises(CurateError, match="no domain"):
        domain_influence(table.with_columns(pl.when(pl.col("doc_id") == "helps-3").then(None).otherwise(pl.col("domain")).alias("domain")),
                         {WHOLE_TARGET: "influence"})
    with pytest.raises(CurateError, match="has no tokens"):
        domain_influence(table.with_columns(pl.when(pl.col("domain") == "hurts").then(0).otherwise(pl.col("tokens")).alias("tokens")),
                         {WHOLE_TARGET: "influence"})


def test_the_sampler_repeats_each_domain_at_its_rate_the_same_way_in_any_number_of_tasks(tmp_path):
    rates = {"a": 2.5, "b": 0.3}
    assert sum(copies_of(f"d{i}", 0.3, seed=0) for i in range(4000)) == pytest.approx(0.3 * 4000, rel=0.1)
    assert [copies_of("d1", 2.5, 7) for _ in range(3)] == [copies_of("d1", 2.5, 7)] * 3
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "docs.jsonl", [{"id": f"{d}-{i}", "text": f"text {d} {i}", "domain": d} for d in rates for i in range(300)])
    out = tmp_path / "weights"
    out.mkdir()
    tokens = {"a": 300 * 10, "b": 300 * 10}
    budget = sum(rates[d] * tokens[d] for d in rates)
    (out / WEIGHTS_FILE).write_text(json.dumps({"budget_tokens": budget, "domains": [
        {"domain": d, "tokens": tokens[d], "weight": rates[d] * tokens[d] / budget} for d in rates]}))

    def sample(tasks: int, folder: Path) -> list[str]:
        LocalPipelineExecutor([JsonlReader(str(corpus)), MixtureSampler(str(out), seed=1), JsonlWriter(str(folder))],
                              tasks=tasks, logging_dir=str(tmp_path / f"logs-{tasks}")).run()
        ids = []
        for path in sorted(folder.glob("*.jsonl.gz")):
            ids += [orjson.loads(line)["id"] for line in gzip.open(path)]
        return sorted(ids)

    one, two = sample(1, tmp_path / "one"), sample(2, tmp_path / "two")
    assert one == two
    per_domain = {d: sum(1 for i in one if i.startswith(d)) for d in rates}
    assert per_domain["a"] == pytest.approx(2.5 * 300, rel=0.05) and per_domain["b"] == pytest.approx(0.3 * 300, rel=0.2)
    assert any(i.endswith("#3") for i in one)  # the third copy of a domain-a document


# ---- on a fitted run --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_run(demo_run):
    """The session's fitted demo run (conftest.demo_run)."""
    return demo_run


def _weights(manifest: dict) -> dict[str, dict]:
    return {d["domain"]: d for d in manifest["weights"]["domains"]}


def test_by_default_a_target_of_the_planted_facts_raises_a_domain_that_states_them_most_within_the_guard(fitted_run, demo_assets, tmp_path):
    """The defaults (domain-operators, macro guard): the domain that gains most is one that states the facts, and the
    guard moves the mixture back towards balance until the domains' predicted mean loss is natural's, which also
    raises the small domains; the resampled dataset realises the weights."""
    target = write_jsonl(tmp_path / "facts.jsonl", [{k: q[k] for k in ("id", "prompt", "completion")} for q in demo_assets.queries[:24]])
    manifest = run_reweight(ReweightRequest(run=str(fitted_run), target=str(target), out=str(tmp_path / "out"),
                                            out_data=str(tmp_path / "mix")))
    weights, record = _weights(manifest), manifest["weights"]
    assert record["aggregation"] == "domain-operators" and record["rule"]["guard"] == "macro"
    assert max(weights, key=lambda d: weights[d]["weight"] / weights[d]["natural"]) in ("stories", "encyclopedia")
    assert 0 < record["guard"]["alpha"] < 1 and record["guard"]["predicted_after"] <= 1e-9
    assert sum(w["weight"] for w in weights.values()) == pytest.approx(1.0)
    assert all(w["epochs"] <= 4.0 + 1e-9 for w in weights.values())
    sampled = manifest["sampled"]
    drawn = {d: sampled[d]["copies"] / weights[d]["documents"] for d in weights}
    for d, w in weights.items():  # the sampler realises each domain's passes (documents are similar in length)
        assert drawn[d] == pytest.approx(w["epochs"], abs=0.25)
    for name in ("weights.json", "weights.png", "domains.parquet", "report.md", "manifest.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_the_domain_operators_reading_gives_a_target_of_the_planted_facts_to_the_domains_that_state_them(fitted_run, demo_assets, tmp_path):
    """`--rule domain-operators` trains one operator per whole domain and reads the target's loss change under each:
    the facts are stated in stories and encyclopedia documents only, so those domains take weight from the others."""
    target = write_jsonl(tmp_path / "facts.jsonl", [{k: q[k] for k in ("id", "prompt", "completion")} for q in demo_assets.queries[:24]])
    result = CliRunner().invoke(main, ["reweight", "--run", str(fitted_run), "--target", str(target), "--out", str(tmp_path / "out"),
                                       "--rule", "domain-operators", "--guard", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    weights = _weights(manifest)
    assert manifest["weights"]["aggregation"] == "domain-operators"
    for domain in ("arithmetic", "recipes"):
        assert weights[domain]["weight"] < weights[domain]["natural"]
    assert sum(weights[d]["weight"] for d in ("stories", "encyclopedia")) > sum(weights[d]["natural"] for d in ("stories", "encyclopedia"))
    # the measured guard reads the same bank's doses on every domain's held-out chunks (no new training): the mixture
    # it writes lies between the rule's and the domains' own optimum, and the report says how far it moved
    guarded = CliRunner().invoke(main, ["reweight", "--run", str(fitted_run), "--target", str(target), "--out", str(tmp_path / "guarded"),
                                        "--rule", "domain-operators", "--guard", "measured", "--smoothing", "0", "--quiet"])
    assert guarded.exit_code == 0, guarded.output
    record = json.loads((tmp_path / "guarded" / "manifest.json").read_text())["weights"]
    guard = record["guard"]
    assert record["rule"]["guard"] == "measured" and 0 <= guard["alpha"] <= 1
    assert "Macro guard" in (tmp_path / "guarded" / "report.md").read_text()
    if "note" not in guard:  # some dose helps some domain's held-out text: the guard holds the domains' mean loss
        assert guard["predicted_after"] <= 1e-9


def test_a_target_of_arithmetic_problems_gives_weight_to_the_arithmetic_domain_by_the_per_document_reading(fitted_run, tmp_path):
    """`--rule positive` (the run's per-document scores) raises arithmetic most for arithmetic problems. The default
    reading keeps the natural mixture on this run, whose model reads every domain's dose as harmful to fresh text,
    and says the weights are no finding (retraining found none better: benchmarks/results/reweight_demo.md)."""
    rng = random.Random(5)
    target = write_jsonl(tmp_path / "sums.jsonl", [{"id": f"sum-{i}", "text": _arithmetic(rng)} for i in range(30)])
    result = CliRunner().invoke(main, ["reweight", "--run", str(fitted_run), "--target", str(target), "--out", str(tmp_path / "out"),
                                       "--rule", "positive", "--guard", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    weights = _weights(json.loads((tmp_path / "out" / "manifest.json").read_text()))
    assert weights["arithmetic"]["weight"] > weights["arithmetic"]["natural"]
    assert max(weights, key=lambda d: weights[d]["weight"] / weights[d]["natural"]) == "arithmetic"
    assert "arithmetic" in result.output
    default = CliRunner().invoke(main, ["reweight", "--run", str(fitted_run), "--target", str(target), "--out", str(tmp_path / "default"), "--quiet"])
    assert default.exit_code == 0, default.output
    record = json.loads((tmp_path / "default" / "manifest.json").read_text())["weights"]
    if record["unhelped_parts"]:
        assert all(d["weight"] == pytest.approx(d["natural"]) for d in record["domains"])
        assert "found nothing to move it by" in default.output
    else:
        assert record["domains"][[d["domain"] for d in record["domains"]].index("arithmetic")]["weight"] >= 0.95 * weights["arithmetic"]["natural"]


def test_the_auto_reading_follows_the_own_domain_check(fitted_run, tmp_path):
    """`--rule auto` holds out some chunks of every domain and asks whether more of a domain helps its own chunks; it
    reads the target off the design only when every domain passes, and otherwise per document. Its weights are those
    of the reading it chose, and the report says which and why."""
    rng = random.Random(5)
    target = write_jsonl(tmp_path / "sums.jsonl", [{"id": f"sum-{i}", "text": _arithmetic(rng)} for i in range(30)])
    auto = run_reweight(ReweightRequest(run=str(fitted_run), target=str(target), out=str(tmp_path / "auto"), rule="auto"))
    record = auto["weights"]
    check = record["own_domain_check"]
    assert sorted(c["domain"] for c in check["domains"]) == sorted(_weights(auto))
    assert all(np.isfinite(c["own_effect"]) and c["standard_error"] > 0 for c in check["domains"])
    z = np.array([c["z"] for c in check["domains"]])
    assert check["pooled_z"] == pytest.approx(z.sum() / np.sqrt(len(z)))
    chosen = "domain-regression" if check["pooled_z"] > 1.96 else "positive"
    assert check["trusted"] == (chosen == "domain-regression")
    assert record["aggregation"] == chosen and record["requested_aggregation"] == "auto"
    explicit = run_reweight(ReweightRequest(run=str(fitted_run), target=str(target), out=str(tmp_path / chosen), rule=chosen))
    assert {d: w["weight"] for d, w in _weights(auto).items()} == {d: w["weight"] for d, w in _weights(explicit).items()}
    assert explicit["weights"]["own_domain_check"] is None
    report = (tmp_path / "auto" / "report.md").read_text()
    assert "Own-domain check" in report and f"z = {check['pooled_z']:+.1f}" in report


class _HeldOutRun:
    """What own_domain_check reads of a run: its chunk table, its design, and responses of its own chunks."""

    def __init__(self, root: Path, chunks: pl.DataFrame, respond):
        self.root, self._chunks, self.engine = root, chunks, self
        self._respond = respond

    def chunks(self) -> pl.DataFrame:
        return self._chunks

    def example_responses(self, rows, name):
        return self._respond(rows)


@pytest.mark.parametrize("own, trusted", [({"A": 2e-5, "B": -2e-5, "C": 2e-5}, True),
                                         ({"A": -2e-5, "B": -1e-5, "C": -2e-5}, False)])
def test_the_own_domain_check_reads_each_domains_effect_on_its_own_text(tmp_path, own, trusted):
    """Responses of held-out chunks planted from per-token effects of each domain on its own chunks (`own`), on top of
    the help each chunk gets from the subsets holding its document. The check reads each domain's sign; pooled, it
    trusts the domain-level reading when most of it says a domain helps its own text, and not when every domain
    reads against its own."""
    from stride_engine.design import random_membership
    from curate.reweight.domain_effects import own_domain_check, trusts_domain_reading

    rng = np.random.default_rng(1)
    domains = np.repeat(["A", "B", "C"], [700, 500, 600])
    lengths = rng.integers(30, 129, len(domains))
    doc_ids = [f"{d}{i // 2}" for i, d in enumerate(domains)]  # documents of two chunks
    chunks = pl.DataFrame({"chunk_id": np.arange(len(domains)), "doc_id": doc_ids, "token_start": 0, "token_end": lengths})
    membership = random_membership(len(domains), 256, 8, seed=2)
    membership.save(tmp_path / "design.npz")
    dense = membership.matrix.toarray()
    document = np.unique(doc_ids, return_inverse=True)[1]

    def respond(rows):
        per_chunk = np.stack([np.where(domains == domains[r], own[domains[r]], 0.0) * lengths for r in rows])
        holds = np.stack([dense[:, document == document[r]].any(axis=1) for r in rows])
        return per_chunk @ dense.T + 0.5 * holds + 1e-3 * rng.standard_normal((len(rows), 256))

    documents = chunks.with_columns(domain=pl.Series(domains)).group_by("doc_id").agg(
        pl.col("domain").first(), pl.col("token_end").sum().alias("tokens"))
    check = own_domain_check(_HeldOutRun(tmp_path, chunks, respond), documents)
    assert check["domain"].to_list() == ["A", "B", "C"]
    assert (check["z"] > 0).to_list() == [own[d] > 0 for d in "ABC"], check
    assert trusts_domain_reading(check) == trusted


def test_proportional_weighting_writes_each_domains_share_of_the_influence_it_reports(fitted_run, tmp_path):
    rng = random.Random(5)
    target = write_jsonl(tmp_path / "sums.jsonl", [{"id": f"sum-{i}", "text": _arithmetic(rng)} for i in range(30)])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["reweight", "--run", str(fitted_run), "--target", str(target), "--out", str(out),
                                       "--rule", "positive", "--guard", "none", "--weighting", "proportional", "--max-epochs", "100", "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "weights.json").read_text())
    assert record["rule"]["weighting"] == "proportional"
    total = {d["domain"]: max(d["influence_per_token"], 0.0) * d["tokens"] for d in record["domains"]}
    for d in record["domains"]:  # what the report says the weights came from is what they are
        assert d["weight"] == pytest.approx(0.8 * total[d["domain"]] / sum(total.values()) + 0.2 * d["natural"])
    assert "share of the target's total positive influence" in (out / "report.md").read_text()


def test_bad_requests_stop_before_anything_is_written(fitted_run, demo_assets, tmp_path):
    target = write_jsonl(tmp_path / "facts.jsonl", [{k: q[k] for k in ("id", "prompt", "completion")} for q in demo_assets.queries[:4]])
    out = tmp_path / "out"
    for options, message in (({"tokens": "100B"}, "epochs"), ({"tokens": "lots"}, "not understood"), ({"eta": 0.0}, "eta"),
                             ({"mode": "worst"}, "needs --weighting tilt"), ({"domain_field": "colour"}, "no 'colour' field"),
                             ({"domain_field": "groups"}, "recovery groups"), ({"out_data": str(out)}, "own folder"),
                             ({"method": "bm25", "rule": "domain-regression"}, "reads STRIDE's measurements"),
                             ({"mode": "worst", "weighting": "tilt"}, "one part"),
                             ({"method": "bm25", "rule": "domain-operators"}, "reads STRIDE's measurements"),
                             ({"rule": "positive", "guard": "measured"}, "only --rule domain-operators"), ({"guard": "micro"}, "guard")):
        with pytest.raises(CurateError, match=message):
            run_reweight(ReweightRequest(run=str(fitted_run), target=str(target), out=str(out), **options))
        assert not out.exists()
    run_reweight(ReweightRequest(run=str(fitted_run), target=str(target), out=str(out)))
    with pytest.raises(CurateError, match="eta"):  # another request into a finished OUT is refused, naming what changed
        run_reweight(ReweightRequest(run=str(fitted_run), target=str(target), out=str(out), eta=2.0))


def test_a_given_mixture_is_resampled_as_given_and_a_bad_one_is_refused(fitted_run, tmp_path):
    domains = sorted(pl.read_parquet(fitted_run / "chunks.parquet")["domain"].unique())
    given = {d: (0.7 if d == "arithmetic" else 0.3 / (len(domains) - 1)) for d in domains}
    out, mix = tmp_path / "out", tmp_path / "mix"
    for weights, message in (({**given, "arithmetic": 0.8}, "sum to 1"), ({d: given[d] for d in domains[1:]}, "no weight"),
                             ({**given, "poetry": 0.0}, "does not have")):
        result = CliRunner().invoke(main, ["reweight", "--run", str(fitted_run), "--weights", json.dumps(weights), "--out", str(out),
                                           "--out-data", str(mix), "--tokens", "20000", "--quiet"])
        assert result.exit_code != 0 and message in result.output, result.output
        assert not out.exists() and not mix.exists()
    both = CliRunner().invoke(main, ["reweight", "--run", str(fitted_run), "--weights", json.dumps(given), "--target", "x.jsonl",
                                     "--out", str(out), "--quiet"])
    assert both.exit_code != 0 and "not both" in both.output
    result = CliRunner().invoke(main, ["reweight", "--run", str(fitted_run), "--weights", json.dumps(given), "--out", str(out),
                                       "--out-data", str(mix), "--tokens", "20000", "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"]["method"] == "given"
    assert {d["domain"]: d["weight"] for d in manifest["weights"]["domains"]} == pytest.approx(given)
    # each domain's tokens are its own documents' (the sampler's rates divide by them)
    chunks = pl.read_parquet(fitted_run / "chunks.parquet")
    own = chunks.group_by("domain").agg((pl.col("token_end") - pl.col("token_start")).sum().alias("tokens"))
    assert {d["domain"]: d["tokens"] for d in manifest["weights"]["domains"]} == dict(zip(own["domain"], own["tokens"]))
    # the resampled dataset holds each domain's share of the budget (documents drawn whole, so roughly)
    written: dict[str, int] = {}
    for path in mix.rglob("*.jsonl*"):
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as handle:
            for line in handle:
                domain = orjson.loads(line)["domain"]  # the writer expands the metadata
                written[domain] = written.get(domain, 0) + 1
    assert max(written, key=written.get) == "arithmetic"
    # another reweighting's weights.json applies the same mixture
    again = CliRunner().invoke(main, ["reweight", "--run", str(fitted_run), "--weights", str(out / "weights.json"),
                                      "--out", str(tmp_path / "again"), "--tokens", "20000", "--quiet"])
    assert again.exit_code == 0, again.output
    repeated = json.loads((tmp_path / "again" / "weights.json").read_text())
    assert {d["domain"]: d["weight"] for d in repeated["domains"]} == pytest.approx(given)


def test_the_similarity_ablation_puts_bm25_scores_through_the_same_rule(fitted_run, tmp_path):
    rng = random.Random(7)
    target = write_jsonl(tmp_path / "sums.jsonl", [{"id": f"sum-{i}", "text": _arithmetic(rng)} for i in range(30)])
    manifest = run_reweight(ReweightRequest(run=str(fitted_run), target=str(target), out=str(tmp_path / "out"), method="bm25"))
    weights = _weights(manifest)
    assert manifest["weights"]["method"] == "bm25-influence"
    assert max(weights, key=lambda d: weights[d]["weight"] / weights[d]["natural"]) == "arithmetic"
    with pytest.raises(CurateError, match="not stride or one of"):
        run_reweight(ReweightRequest(run=str(fitted_run), target=str(target), out=str(tmp_path / "other"), method="random"))


@pytest.mark.slow
def test_a_resampling_submitted_to_slurm_runs_as_its_nodes_would_run_it(fitted_run, demo_assets, tmp_path, monkeypatch):
    """The sbatch scripts datatrove writes, run task by task in fresh processes by a stand-in scheduler (fake_slurm.py):
    the same weights, documents and copies as the local executor's."""
    target = write_jsonl(tmp_path / "facts.jsonl", [{k: q[k] for k in ("id", "prompt", "completion")} for q in demo_assets.queries[:12]])
    slurm = FakeSlurm(tmp_path / "slurm-cluster")
    monkeypatch.setenv("PATH", slurm.path())
    submitted = run_reweight(ReweightRequest(run=str(fitted_run), target=str(target), out=str(tmp_path / "slurm"),
                                             out_data=str(tmp_path / "slurm-mix"), tokens="60000", executor="slurm", tasks=2,
                                             workers=2, executor_options={"partition": "cpu"}))
    assert submitted == {} and not (tmp_path / "slurm" / "manifest.json").exists()
    jobs = [job for job in slurm.run_jobs() if "launch_pickled_pipeline" in job.script]
    assert jobs and all(job.directives["partition"] == "cpu" for job in jobs) and max(len(job.array) for job in jobs) == 2
    assert all(later.depends_on == [earlier.id] for earlier, later in zip(jobs, jobs[1:]))
    on_slurm = json.loads((tmp_path / "slurm" / "manifest.json").read_text())
    local = run_reweight(ReweightRequest(run=str(fitted_run), target=str(target), out=str(tmp_path / "local"),
                                         out_data=str(tmp_path / "local-mix"), tokens="60000"))
    assert on_slurm["weights"]["domains"] == local["weights"]["domains"]
    assert on_slurm["sampled"] == local["sampled"]
    assert written_ids(tmp_path / "slurm-mix") == written_ids(tmp_path / "local-mix") and written_ids(tmp_path / "local-mix")


@pytest.mark.slow
def test_the_ray_executor_writes_the_same_mixture(fitted_run, demo_assets, tmp_path, monkeypatch):
    """datatrove's Ray executor, on a local Ray instance, two tasks resampling: the same documents and copies as local."""
    ray = pytest.importorskip("ray")
    import shutil
    import tempfile

    target = write_jsonl(tmp_path / "facts.jsonl", [{k: q[k] for k in ("id", "prompt", "completion")} for q in demo_assets.queries[:12]])
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    monkeypatch.setenv("TMPDIR", ray_tmp)  # datatrove's Ray executor writes its task logs under $TMPDIR
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
    try:
        on_ray = run_reweight(ReweightRequest(run=str(fitted_run), target=str(target), out=str(tmp_path / "ray"),
                                              out_data=str(tmp_path / "ray-mix"), tokens="60000", executor="ray", tasks=2, workers=2))
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    local = run_reweight(ReweightRequest(run=str(fitted_run), target=str(target), out=str(tmp_path / "local"),
                                         out_data=str(tmp_path / "local-mix"), tokens="60000"))
    assert on_ray["weights"]["domains"] == local["weights"]["domains"]
    assert on_ray["sampled"] == local["sampled"]
    assert written_ids(tmp_path / "ray-mix") == written_ids(tmp_path / "local-mix") and written_ids(tmp_path / "local-mix")


@pytest.mark.slow
def test_the_target_attributed_by_several_tasks_gives_the_weights_one_task_gives(demo_run, demo_assets, tmp_path, monkeypatch):
    """With two tasks the target's parts are measured and recovered by both (curate.core.attribution) and merged,
    before the weights stage reads them: the same weights as one task. The submitting process attributes nothing:
    its checks read only the run's chunk table and the target's items."""
    import shutil

    from curate.core.run import Run
    from curate.reweight import check_request

    rng = random.Random(3)
    facts = [{"id": q["id"], "prompt": q["prompt"], "completion": q["completion"], "part": "facts"} for q in demo_assets.queries[:70]]
    sums = [{"id": f"sum-{i}", "text": _arithmetic(rng), "part": "sums"} for i in range(70)]
    target = write_jsonl(tmp_path / "mixed.jsonl", facts + sums)  # two parts of 70: recovery's batches of 64 split each
    weights = {}
    for tasks in (1, 2):
        run = tmp_path / f"run-{tasks}"
        shutil.copytree(demo_run, run)
        request = ReweightRequest(run=str(run), target=str(target), out=str(tmp_path / f"out-{tasks}"), mode="average",
                                  tasks=tasks, workers=1, rule="positive", guard="none")  # a reading of the run's scores
        with monkeypatch.context() as patched:
            for method in ("score_store", "responses", "attribute_part", "merge_parts"):
                patched.setattr(Run, method, lambda *a, **k: pytest.fail("the submitting process attributed the target"))
            check_request(request)
        assert not (tmp_path / f"out-{tasks}").exists()
        manifest = run_reweight(request)
        weights[tasks] = [(d["domain"], d["weight"]) for d in manifest["weights"]["domains"]]
        assert set(manifest["weights"]["parts"]) == {"target", "facts", "sums"}
        assert not (run / "parts").exists() or not any((run / "parts").iterdir())  # merged, then removed
    assert [d for d, _ in weights[2]] == [d for d, _ in weights[1]]
    np.testing.assert_allclose([w for _, w in weights[2]], [w for _, w in weights[1]], rtol=1e-9)


def test_a_run_prepared_without_operators_reweights_by_domain_operators_and_refuses_what_needs_them(demo_assets, tmp_path, monkeypatch):
    """`curate fit --chunks-only` stops before STRIDE's operators: the domain-operators reading trains a bank of its
    own on the run's chunks, every reading that needs the run's operators is refused by name, and a later full fit
    trains them in the same folder."""
    import curate.reweight.domain_operators as domain_operators

    monkeypatch.setattr(domain_operators, "STEPS", 20)  # the reading's bank, shortened: what it measures is tested above
    run = tmp_path / "run"
    fit = ["fit", "--model", str(demo_assets.model_dir), "--train", str(demo_assets.corpus_path), "--out", str(run),
           "--preset", "cpu-smoke", "--set", "steps=10", "--quiet"]
    prepared = CliRunner().invoke(main, [*fit, "--chunks-only"])
    assert prepared.exit_code == 0, prepared.output
    assert "chunks only" in prepared.output and not (run / "operators").exists()
    assert json.loads((run / "inputs.json").read_text())["operators"] is False
    target = write_jsonl(tmp_path / "facts.jsonl", [{k: q[k] for k in ("id", "prompt", "completion")} for q in demo_assets.queries[:8]])
    reweighted = CliRunner().invoke(main, ["reweight", "--run", str(run), "--target", str(target), "--out", str(tmp_path / "w"),
                                           "--rule", "domain-operators", "--guard", "measured", "--quiet"])
    assert reweighted.exit_code == 0, reweighted.output
    weights = _weights(json.loads((tmp_path / "w" / "manifest.json").read_text()))
    assert sorted(weights) == ["arithmetic", "encyclopedia", "recipes", "stories"]
    assert not (run / "operators").exists()  # the run's own operators were never trained
    for command, folder in ((["reweight", "--run", str(run), "--target", str(target), "--rule", "positive"], "r"),
                            (["select", "--run", str(run), "--target", str(target), "--budget", "10%"], "s")):
        refused = CliRunner().invoke(main, [*command, "--out", str(tmp_path / folder), "--quiet"])
        assert refused.exit_code != 0 and "--chunks-only" in refused.output, refused.output
        assert not (tmp_path / folder).exists()
    trained = CliRunner().invoke(main, fit)
    assert trained.exit_code == 0, trained.output
    assert (run / "operators" / "bank.safetensors").is_file() and "operators" not in json.loads((run / "inputs.json").read_text())
