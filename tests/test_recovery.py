"""Sparse recovery (stride_engine.recovery) on a synthetic expander with a known sparse signed signal."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch

from stride_engine.errors import ConfigError
from stride_engine.recovery import (
    CentredOperator,
    RecoverySettings,
    lambda_max,
    lasso,
    lasso_fista,
    recover,
)

N, K, D, S, Q = 2000, 200, 8, 10, 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These problems are tiny; torch's worker threads only add overhead (and stall badly when other
    # processes share the cores), so the tests run single-threaded.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def expander(n: int, k: int, d: int, seed: int) -> scipy.sparse.csr_matrix:
    """K×n 0/1 membership: each example in d distinct random subsets (left-d-regular bipartite graph)."""
    rng = np.random.default_rng(seed)
    rows = np.argsort(rng.random((n, k)), axis=1)[:, :d].ravel()
    cols = np.repeat(np.arange(n), d)
    m = scipy.sparse.csr_matrix((np.ones(n * d, np.float32), (rows, cols)), shape=(k, n))
    m.indices, m.indptr = m.indices.astype(np.int32), m.indptr.astype(np.int32)
    return m


@pytest.fixture(scope="module")
def problem():
    m = expander(N, K, D, seed=0)
    rng = np.random.default_rng(1)
    w = np.zeros((Q, N))
    support = [np.sort(rng.choice(N, S, replace=False)) for _ in range(Q)]
    for q, idx in enumerate(support):
        w[q, idx] = rng.uniform(0.5, 1.5, S) * rng.choice([-1.0, 1.0], S)
    y = 3.0 + (m @ w.T).T + 0.05 * rng.standard_normal((Q, K))  # constant offset c = 3 tests the intercept
    return m, w, y, support


def run(m, y, **kw) -> tuple[np.ndarray, np.ndarray]:
    out = list(recover(m, y, RecoverySettings(**kw)))
    return np.concatenate([o[1] for o in out]), np.concatenate([o[2] for o in out])


def quality(scores: np.ndarray, w: np.ndarray, support: list[np.ndarray]) -> dict[str, float]:
    top = np.argsort(-np.abs(scores), axis=1)[:, :S]
    recall = np.mean([len(set(top[q]) & set(support[q])) / S for q in range(Q)])
    signs = np.mean([np.mean(np.sign(scores[q, s]) == np.sign(w[q, s])) for q, s in enumerate(support)])
    err, rescaled = [], []
    for q, s in enumerate(support):
        got, true = scores[q, s].astype(np.float64), w[q, s]
        err.append(np.linalg.norm(got - true) / np.linalg.norm(true))
        k = got @ true / max(got @ got, 1e-30)  # best rescaling: a scale-free error (ridge shrinks a lot)
        rescaled.append(np.linalg.norm(k * got - true) / np.linalg.norm(true))
    return {"top10_recall": recall, "sign_acc": signs, "support_rel_err": np.mean(err),
            "rescaled_err": np.mean(rescaled)}


@pytest.mark.parametrize("rule", ["cv", "fixed"])
def test_lasso_recovers_support_and_signs(problem, rule):
    m, w, y, support = problem
    scores, lams = run(m, y, lambda_rule=rule)
    assert scores.shape == (Q, N) and scores.dtype == np.float32 and lams.shape == (Q,)
    got = quality(scores, w, support)
    print(f"lasso/{rule}: {got}, non-zeros per query {(scores != 0).sum(1).tolist()}")
    top = np.argsort(-np.abs(scores), axis=1)[:, :S]
    for q in range(Q):
        assert set(top[q]) == set(support[q]), f"query {q}: top-10 {sorted(top[q])} != support {support[q]}"
    assert got["sign_acc"] == 1.0
    assert got["support_rel_err"] < 0.2


def test_ridge_is_clearly_worse_on_the_support(problem):
    m, w, y, support = problem
    lasso_q = quality(run(m, y, lambda_rule="fixed")[0], w, support)
    ridge_q = quality(run(m, y, solver="ridge")[0], w, support)
    print(f"lasso: {lasso_q}\nridge: {ridge_q}")
    # seen (seeds 0-3): recall lasso 1.0, ridge 0.70-0.75; rescaled error lasso ~0.03, ridge 0.17-0.20
    assert ridge_q["top10_recall"] <= lasso_q["top10_recall"] - 0.15
    assert ridge_q["rescaled_err"] > 3 * lasso_q["rescaled_err"]
    assert ridge_q["support_rel_err"] > 0.5 > 0.2 > lasso_q["support_rel_err"]


def test_ridge_matches_the_dense_formula():
    m = expander(300, 40, 4, seed=3)
    y = np.random.default_rng(4).standard_normal((3, 40))
    scores, alphas = run(m, y, solver="ridge", ridge_alpha=0.5)
    a = m.toarray().astype(np.float64)
    a -= a.mean(0)  # the centred operator
    y_c = (y - y.mean(1, keepdims=True)).T
    alpha = 0.5 * np.trace(a @ a.T) / 40
    primal = np.linalg.solve(a.T @ a + alpha * np.eye(300), a.T @ y_c).T  # the same ridge, primal form
    np.testing.assert_allclose(alphas, alpha, rtol=1e-9)
    np.testing.assert_allclose(scores, primal, atol=1e-5 * np.abs(primal).max())


def test_lasso_satisfies_kkt_and_matches_plain_fista():
    m = expander(500, 60, 5, seed=5)
    y = np.random.default_rng(6).standard_normal((4, 60))
    op = CentredOperator.from_scipy(m)
    y_c = torch.as_tensor((y - y.mean(1, keepdims=True)).T, dtype=torch.float32)
    lam = 0.1 * lambda_max(op, y_c)
    w, mw = lasso(op, y_c, lam, tol=1e-7, max_iter=20000)  # working sets on per-query blocks
    grad = op.adjoint(y_c - op.forward(w))  # at the optimum: = λ sign(w) on the support, |·| ≤ λ off it
    on = w != 0
    assert on.sum() > 0
    assert torch.all(grad.abs() <= lam * (1 + 2e-3) + 1e-5)
    assert torch.allclose(grad[on], (lam * torch.sign(w))[on], rtol=2e-3, atol=1e-4)
    assert torch.allclose(mw, op.product(w), atol=1e-4)
    plain, _ = lasso_fista(op, y_c, lam, op.norm_sq(), tol=1e-7, max_iter=20000)  # all n examples at once
    assert torch.allclose(plain, w, atol=1e-3 * float(w.abs().max()))


def test_lambda_max_gives_zeros_and_smaller_lambda_does_not(problem):
    m, _, y, _ = problem
    zero, lams = run(m, y, lambda_rule="fixed", lambda_fraction=1.0)
    assert np.all(zero == 0)
    some, _ = run(m, y, lambda_rule="fixed", lambda_fraction=0.9)
    assert np.all((some != 0).sum(1) >= 1)
    op = CentredOperator.from_scipy(m)
    y_c = torch.as_tensor((y - y.mean(1, keepdims=True)).T, dtype=torch.float32)
    np.testing.assert_allclose(lams, lambda_max(op, y_c).numpy(), rtol=1e-6)


def test_intercept_is_ignored(problem):
    m, _, y, _ = problem
    a, _ = run(m, y, lambda_rule="fixed")
    b, _ = run(m, y - 3.0 + 100.0, lambda_rule="fixed")
    np.testing.assert_allclose(a, b, atol=1e-3 * np.abs(a).max())


def test_batching_does_not_change_scores(problem):
    m, _, y, _ = problem
    for rule in ("fixed", "cv"):
        whole, lam_whole = run(m, y, lambda_rule=rule, query_batch=Q)
        seen, parts, lam_parts = [], [], []
        for idx, scores, lams in recover(m, y, RecoverySettings(lambda_rule=rule, query_batch=3)):
            assert len(idx) <= 3 and scores.shape == (len(idx), N) and lams.shape == (len(idx),)
            seen.extend(idx.tolist()), parts.append(scores), lam_parts.append(lams)
        assert seen == list(range(Q))
        np.testing.assert_allclose(np.concatenate(lam_parts), lam_whole, rtol=1e-5)
        np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-3 * np.abs(whole).max())


def test_cv_prefers_the_null_model_on_pure_noise():
    m = expander(N, K, D, seed=7)
    y = np.random.default_rng(8).standard_normal((Q, K))
    scores, _ = run(m, y)
    zero = (scores == 0).all(1)
    print(f"pure noise: {zero.sum()} of {Q} queries all-zero; non-zeros {(scores != 0).sum(1).tolist()}")
    assert zero.sum() >= Q // 2


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"solver": "omp"}, "solver"),
        ({"lambda_rule": "bic"}, "lambda_rule"),
        ({"cv_folds": 1}, "cv_folds"),
        ({"lambda_fraction": 0.0}, "lambda_fraction"),
        ({"lambda_grid": (0.5, 1.5)}, "lambda_grid"),
    ],
)
def test_bad_settings(kw, match):
    with pytest.raises(ConfigError, match=match):
        RecoverySettings(**kw)


def test_bad_inputs():
    m = expander(50, 6, 2, seed=9)
    y = np.zeros((2, 6))
    with pytest.raises(ConfigError, match="shape"):
        recover(m, np.zeros((2, 7)))
    with pytest.raises(ConfigError, match="shape"):
        recover(m, np.zeros(6))  # one query must be (1, K)
    with pytest.raises(ConfigError, match="scipy.sparse"):
        recover(m.toarray(), y)
    with pytest.raises(ConfigError, match="numeric"):
        recover(m, y.astype(str))
    for bad in (np.nan, np.inf):
        y_bad = y.copy()
        y_bad[1, 3] = bad
        with pytest.raises(ConfigError, match="NaN/inf"):
            recover(m, y_bad)
    with pytest.raises(ConfigError, match="cv_folds=7 exceeds"):
        recover(m, y, RecoverySettings(cv_folds=7))


@pytest.mark.parametrize("solver", ["lasso", "ridge"])
def test_a_query_whose_responses_are_tiny_gets_the_same_scores_in_its_own_units(problem, solver):
    """A loss the model has already driven to ~0 moves by 1e-20 under steering; float32 cannot hold that against a
    unit-sized problem. Each query is solved in units of its own spread, so the scores are the same up to the scale."""
    m, _, y, _ = problem
    plain, lam = run(m, y, solver=solver, lambda_rule="fixed")
    tiny, lam_tiny = run(m, y * 1e-20, solver=solver, lambda_rule="fixed")
    assert (tiny != 0).sum() == (plain != 0).sum() > 0
    np.testing.assert_allclose(tiny.astype(np.float64) * 1e20, plain, rtol=1e-4, atol=1e-5 * np.abs(plain).max())
    if solver == "lasso":
        np.testing.assert_allclose(lam_tiny * 1e20, lam, rtol=1e-5)
    constant = run(m, np.ones((2, K)), solver=solver, lambda_rule="fixed")[0]
    assert not constant.any()  # constant responses say nothing: no score
