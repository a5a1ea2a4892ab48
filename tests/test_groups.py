"""Grouped recovery (stride_engine.groups): a dense effect shared by a group of similar examples, which the
plain Lasso cannot resolve from K ≪ n measurements, is recovered; a sparse planted example still stands out;
groups come from the model's own states and are persisted with the run."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from stride_engine import Stride, preset, read_documents, read_queries
from stride_engine.errors import ConfigError
from stride_engine.groups import cluster_examples, group_design, nearest_group
from stride_engine.recovery import RecoverySettings, recover

from test_recovery import expander, one_thread  # noqa: F401 (one_thread: an autouse fixture, single-threaded torch)
from tiny import random_texts, save_tiny_model, write_jsonl

N, K, D, GROUPS = 3000, 128, 4, 6


@pytest.fixture(scope="module")
def dense_problem():
    """Every example of group 0 (a sixth of the corpus) helps the queries a little; one example of group 3 a lot."""
    m = expander(N, K, D, seed=3)
    rng = np.random.default_rng(4)
    groups = rng.integers(0, GROUPS, N)
    w = np.where(groups == 0, 0.05, 0.0)
    planted = int(np.flatnonzero(groups == 3)[0])
    w[planted] = 1.5
    y = 1.0 + (m @ w)[None, :] + 0.05 * rng.standard_normal((4, K))
    return m, y, groups, planted


def _scores(m, y, **kw) -> np.ndarray:
    return np.concatenate([part[1] for part in recover(m, y, RecoverySettings(**kw.pop("settings", {})), **kw)])


def test_a_dense_group_effect_is_recovered_only_with_groups(dense_problem):
    m, y, groups, planted = dense_problem
    top = N // 10
    plain = _scores(m, y).mean(0)
    grouped = _scores(m, y, groups=groups).mean(0)
    share = lambda s: (groups[np.argsort(-s, kind="stable")[:top]] == 0).mean()
    print(f"group-0 share of the top 10%: plain {share(plain):.2f}, grouped {share(grouped):.2f} (corpus {np.mean(groups == 0):.2f})")
    assert share(plain) < 0.5  # each subset mixes ~94 examples: chunk by chunk, the dense effect drowns
    assert share(grouped) > 0.9
    # The planted example is the sparse rest: it still ranks first, above its whole group.
    assert int(np.argmax(grouped)) == planted


def test_grouped_recovery_with_ridge_and_cv_solvers(dense_problem):
    m, y, groups, _ = dense_problem
    for settings in ({"solver": "ridge"}, {"lambda_rule": "cv"}):
        scores = _scores(m, y, groups=groups, settings=settings).mean(0)
        assert scores[groups == 0].mean() > scores[groups != 0].mean() + 0.02, settings


def test_bad_groups_are_refused(dense_problem):
    m, y, groups, _ = dense_problem
    with pytest.raises(ConfigError, match="groups must give each"):
        list(recover(m, y, groups=groups[:-1]))
    with pytest.raises(ConfigError, match="groups must give each"):
        list(recover(m, y, groups=-groups - 1))
    with pytest.raises(ConfigError, match="group_ridge"):
        RecoverySettings(group_ridge=0.0)
    with pytest.raises(ConfigError, match="groups must be 0"):
        preset("cpu-smoke", groups=-1)


def test_clusters_follow_the_features_and_the_seed():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (3, 5))
    truth = np.repeat(np.arange(3), 50)
    features = centres[truth] + rng.normal(0, 0.5, (150, 5))
    labels = cluster_examples(features, 3, seed=0)
    assert len(set(zip(truth, labels))) == 3  # each true cluster maps to exactly one label
    np.testing.assert_array_equal(labels, cluster_examples(features, 3, seed=0))
    with pytest.raises(ConfigError, match="exceeds the number of training examples"):
        cluster_examples(features, 151, seed=0)
    design = group_design(expander(150, 10, 2, seed=1), labels)
    assert design.shape == (10, 3) and design.sum() == 150 * 2
    # New points near a true centre land in the group that centre's examples were given.
    new = centres[[2, 0, 1, 2]] + rng.normal(0, 0.5, (4, 5))
    np.testing.assert_array_equal(nearest_group(features, labels, new), labels[[100, 0, 50, 100]])
    with pytest.raises(ConfigError, match="per row"):
        nearest_group(features, labels, new[:, :3])


def test_a_pool_beyond_the_sample_is_clustered_from_a_sample_and_every_example_joins_its_nearest_centre(monkeypatch):
    """Beyond KMEANS_SAMPLE examples k-means sees a seeded sample and the rest are assigned in batches: the planted
    clusters are still found, for every example, and the same seed gives the same groups. A pool within the cap is
    clustered whole, as k-means on all of it."""
    import scipy.cluster.vq

    from stride_engine import groups as grouping

    rng = np.random.default_rng(3)
    centres = rng.normal(0, 10, (4, 6))
    truth = np.repeat(np.arange(4), 300)
    features = (centres[truth] + rng.normal(0, 0.5, (1200, 6))).astype(np.float32)  # pooled states are float32
    whole = cluster_examples(features, 4, seed=0)
    points = features.astype(np.float64)
    points = (points - points.mean(axis=0)) / points.std(axis=0)
    _, direct = scipy.cluster.vq.kmeans2(points, 4, minit="++", seed=np.random.default_rng([0, 11]))
    np.testing.assert_array_equal(whole, np.unique(direct, return_inverse=True)[1])
    monkeypatch.setattr(grouping, "KMEANS_SAMPLE", 100)
    monkeypatch.setattr(grouping, "ASSIGN_BATCH", 128)
    sampled = cluster_examples(features, 4, seed=0)
    assert len(sampled) == 1200 and len(set(zip(truth, sampled))) == 4  # every example in its planted cluster's group
    np.testing.assert_array_equal(sampled, cluster_examples(features, 4, seed=0))
    new = centres[[3, 1]] + rng.normal(0, 0.5, (2, 6))
    np.testing.assert_array_equal(nearest_group(features, sampled, new), sampled[[900, 300]])


def test_a_run_clusters_its_chunks_once_and_rescoring_keeps_the_operators(tmp_path):
    texts = random_texts(120, seed=1)
    model = save_tiny_model(tmp_path / "model", "llama", texts)
    train = write_jsonl(tmp_path / "train.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(texts)])
    queries = read_queries(write_jsonl(tmp_path / "queries.jsonl", [{"id": "q", "text": "alpha beta gamma"}]))
    tiny = dict(chunk_length=16, num_subsets=16, subsets_per_example=3, rank=4, steps=12, operators_per_step=4,
                linearity_every=6, linearity_operators=12, top_k=20)
    documents = read_documents([train])
    Stride.from_pretrained(model, preset("cpu-smoke", **tiny), tmp_path / "run", progress=False).fit(documents).attribute(queries)
    bank = (tmp_path / "run" / "operators" / "bank.safetensors").read_bytes()

    grouped = Stride.from_pretrained(model, preset("cpu-smoke", **tiny, groups=3), tmp_path / "run", progress=False)
    grouped.fit(documents, force=True)  # new recovery settings on a finished run: force rescores, it does not refit
    store = grouped.attribute(queries, force=True)
    assert (tmp_path / "run" / "operators" / "bank.safetensors").read_bytes() == bank
    chunks = pl.read_parquet(tmp_path / "run" / "chunks.parquet")
    groups = pl.read_parquet(tmp_path / "run" / "groups" / "3.parquet")
    assert groups["chunk_id"].to_list() == chunks["chunk_id"].to_list() and groups["group"].n_unique() == 3
    assert store.queries()["nonzero_chunks"].item() == len(chunks)  # grouped scores are dense
    # The groups are computed once: a second rescoring reads them back.
    before = (tmp_path / "run" / "groups" / "3.parquet").stat().st_mtime_ns
    again = Stride.from_pretrained(model, preset("cpu-smoke", **tiny, groups=3, group_ridge=5.0), tmp_path / "run", progress=False)
    again.fit(documents, force=True).attribute(queries, force=True)
    assert (tmp_path / "run" / "groups" / "3.parquet").stat().st_mtime_ns == before
    # A training text as a query lands in the group of its own chunk.
    own = read_queries(write_jsonl(tmp_path / "own.jsonl", [{"id": "own", "text": texts[0]}]))
    first_chunk_group = groups.join(chunks, on="chunk_id").filter(pl.col("doc_id") == "doc0")["group"][0]
    assert nearest_group(again.pooled_states(), groups["group"].to_numpy(), again.pooled_states(own))[0] == first_chunk_group


def test_label_effects_recover_each_labels_planted_effect_per_unit_with_honest_errors():
    """Responses made from a planted per-token effect of each of four labels (one helps, one hurts, two do nothing),
    with examples of unequal weight (tokens): the regression on the design recovers each effect, and its standard
    errors cover the truth about as often as they say."""
    from stride_engine.design import random_membership
    from stride_engine.groups import label_effects

    n, k = 2000, 256
    membership = random_membership(n, k, 8, seed=1).matrix
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, n)
    tokens = rng.integers(20, 129, n).astype(float)
    truth = np.array([3.0, 0.0, -2.0, 0.0]) * 1e-4
    noise = 0.02
    covered, estimates = [], []
    for trial in range(40):
        y = 0.5 + membership @ (truth[labels] * tokens) + noise * rng.standard_normal(k)
        effects, errors = label_effects(membership, labels, tokens, y)
        estimates.append(effects)
        contrast, truth_contrast = effects - effects.mean(), truth - truth.mean()
        covered.append(np.abs(contrast - truth_contrast) < 1.96 * errors)
    assert np.argmax(np.mean(estimates, axis=0)) == 0 and np.argmin(np.mean(estimates, axis=0)) == 2
    assert np.allclose(np.mean(estimates, axis=0), truth, atol=3e-5)
    assert 0.85 < np.mean(covered) < 1.0  # ~95% nominal


def test_label_effects_refuse_labels_the_design_cannot_tell_apart():
    from stride_engine.design import random_membership
    from stride_engine.groups import label_effects

    membership = random_membership(50, 32, 4, seed=0).matrix
    with pytest.raises(ConfigError, match="one label and one weight per example"):
        label_effects(membership, np.zeros(49, dtype=int), np.ones(49), np.zeros(32))
    with pytest.raises(ConfigError, match="cannot be told apart"):  # label 1 never occurs: its column is empty
        label_effects(membership, np.where(np.arange(50) < 25, 0, 2), np.ones(50), np.zeros(32))
    with pytest.raises(ConfigError, match="subsets"):
        label_effects(membership, np.arange(50) % 40, np.ones(50), np.zeros(32))


def test_held_out_label_effects_see_past_each_querys_own_membership():
    """Training examples as queries: every query is helped strongly by the subsets holding its document (its own
    membership, as in any steered run), and on top of that each label's tokens move its queries by a planted
    per-token effect: label 0's hurt label 0's queries, the others' help their own. Held out by membership, the check
    reads label 0 as against its own text and the others as for theirs; without holding out, the self-help would
    hide it."""
    from stride_engine.design import random_membership
    from stride_engine.groups import held_out_label_effects, label_effects

    n, k = 1200, 256
    membership = random_membership(n, k, 8, seed=3).matrix
    rng = np.random.default_rng(4)
    doc_index = np.repeat(np.arange(n // 2), 2)  # documents of two chunks each
    labels = np.repeat(rng.integers(0, 4, n // 2), 2)
    tokens = rng.integers(20, 129, n).astype(float)
    own = np.array([-3.0, 2.0, 2.0, 2.0]) * 1e-4  # what a label's tokens do to that label's own queries
    rows = np.concatenate([rng.choice(np.flatnonzero(labels == c), 30, replace=False) for c in range(4)])
    dense = membership.toarray()
    x = np.column_stack([dense @ (tokens * (labels == c)) for c in range(4)])  # (K, labels): tokens per subset
    holds_document = np.stack([dense[:, doc_index == doc_index[r]].any(axis=1) for r in rows])  # (Q, K)
    y = own[labels[rows]][:, None] * x[:, labels[rows]].T + 3.0 * holds_document + 0.01 * rng.standard_normal((len(rows), k))

    effects, errors = held_out_label_effects(membership, labels, tokens, y, rows, doc_index)
    assert effects[0] < -2 * errors[0] and all(effects[1:] > 2 * errors[1:]), (effects, errors)
    truth = own - own / 4  # each label's own effect beyond the labels' mean effect on its queries (the others' is 0)
    assert np.allclose(effects, truth, rtol=0.3), (effects, truth)
    # the same queries without holding out: their own membership drags label 0's reading far towards "helps"
    naive, _ = label_effects(membership, labels, tokens, np.column_stack([y[labels[rows] == c].mean(axis=0) for c in range(4)]))
    assert naive[0, 0] - naive[:, 0].mean() > effects[0] + 3 * errors[0]


def test_held_out_label_effects_need_a_query_of_every_label():
    from stride_engine.design import random_membership
    from stride_engine.groups import held_out_label_effects

    membership = random_membership(100, 32, 4, seed=0).matrix
    labels = np.arange(100) % 3
    with pytest.raises(ConfigError, match="every label needs"):
        held_out_label_effects(membership, labels, np.ones(100), np.zeros((2, 32)), np.array([0, 1]), np.arange(100))
    with pytest.raises(ConfigError, match="one response per query"):
        held_out_label_effects(membership, labels, np.ones(100), np.zeros((3, 31)), np.array([0, 1, 2]), np.arange(100))


def test_with_bounded_state_memory_the_pooled_states_are_clustered_from_a_file_and_give_the_same_groups(tmp_path, monkeypatch):
    """state_cache disk or recompute: the groups stage maps the pooled states from a scratch file (removed after)
    instead of holding them, and the groups are those of the in-memory run."""
    from stride_engine import stride as engine

    texts = random_texts(120, seed=2)
    model = save_tiny_model(tmp_path / "model", "llama", texts)
    train = write_jsonl(tmp_path / "train.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(texts)])
    tiny = dict(chunk_length=16, num_subsets=16, subsets_per_example=3, rank=4, steps=6, operators_per_step=4,
                linearity_every=6, linearity_operators=12, top_k=20, groups=3)
    documents = read_documents([train])
    seen = []
    cluster = engine.cluster_examples
    monkeypatch.setattr(engine, "cluster_examples", lambda features, *a: seen.append(type(features)) or cluster(features, *a))
    groups = {}
    for cache in ("memory", "recompute"):
        run = tmp_path / cache
        Stride.from_pretrained(model, preset("cpu-smoke", **tiny, state_cache=cache), run, progress=False).fit(documents).groups()
        groups[cache] = pl.read_parquet(run / "groups" / "3.parquet")["group"].to_numpy()
        assert sorted(p.name for p in (run / "groups").iterdir()) == ["3.parquet"]  # the scratch file is gone
    assert seen == [np.ndarray, np.memmap]
    np.testing.assert_array_equal(groups["recompute"], groups["memory"])
