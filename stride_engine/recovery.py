"""Recover per-example influence scores w from subset responses y ≈ c + M w (STRIDE's sparse-recovery step).

M is the K×n 0/1 membership matrix (K subsets, n training examples), y_q ∈ R^K one query's responses.
The intercept c is removed by centring: y_c = y − mean(y), A w = M w − mean_rows(M w); since A w − y_c
is then centred, Aᵀ r = Mᵀ r and M is never densified.  Lasso (FISTA, batched over queries, torch so
the same code runs on a GPU) is the main solver; dual-form ridge is the dense baseline.

Memory: M and Mᵀ as sparse tensors, plus a handful of n×b dense blocks (b = query_batch); never n×Q.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import scipy.linalg
import scipy.sparse
import torch

from stride_engine.errors import ConfigError

SOLVERS = ("lasso", "ridge")
LAMBDA_RULES = ("cv", "fixed")


@dataclass(frozen=True)
class RecoverySettings:
    """How scores are recovered.  Lambdas are fractions of each query's λ_max = ‖Aᵀ y_c‖∞ (scale-free)."""

    solver: str = "lasso"  # "lasso" | "ridge"
    lambda_rule: str = "cv"  # "cv": held-out subsets pick the fraction | "fixed": lambda_fraction·λ_max
    lambda_fraction: float = 0.05
    # 10 geometric steps 0.5 → 0.002 (ratio ≈ 0.54); the path is solved large → small with warm starts.
    lambda_grid: tuple[float, ...] = tuple(float(f) for f in np.geomspace(0.5, 0.002, 10))
    cv_folds: int = 5
    cv_seed: int = 0  # seeds the split of subsets into folds (deterministic)
    # ridge penalty in units of trace(A Aᵀ)/K (the mean eigenvalue), so it does not depend on n, d, K or y's scale.
    ridge_alpha: float = 1.0
    max_iter: int = 2000
    tol: float = 1e-6  # FISTA stops when ‖w_k+1 − w_k‖ / ‖w_k+1‖ < tol for every query of the batch
    # the CV fits only rank λ's by held-out error, which 1e-4 already gives to ~3 digits at ~1/4 the cost
    cv_tol: float = 1e-4
    query_batch: int = 64

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError(f"recovery solver {self.solver!r} is unknown; use one of {SOLVERS}")
        if self.lambda_rule not in LAMBDA_RULES:
            raise ConfigError(f"lambda_rule {self.lambda_rule!r} is unknown; use one of {LAMBDA_RULES}")
        if not 0.0 < self.lambda_fraction <= 1.0:
            raise ConfigError(f"lambda_fraction={self.lambda_fraction} must be in (0, 1] (a fraction of λ_max)")
        if not self.lambda_grid or not all(0.0 < f < 1.0 for f in self.lambda_grid):
            raise ConfigError(f"lambda_grid={self.lambda_grid} must be a non-empty list of fractions in (0, 1)")
        if self.cv_folds < 2:
            raise ConfigError(f"cv_folds={self.cv_folds} must be at least 2")
        if self.ridge_alpha <= 0:
            raise ConfigError(f"ridge_alpha={self.ridge_alpha} must be > 0")
        if self.max_iter < 1 or self.tol <= 0 or self.cv_tol <= 0 or self.query_batch < 1:
            raise ConfigError(
                f"max_iter={self.max_iter}, query_batch={self.query_batch} must be >= 1; tol={self.tol}, cv_tol={self.cv_tol} > 0"
            )


def _to_torch_csr(m: scipy.sparse.csr_matrix, device: torch.device) -> torch.Tensor:
    m = m.astype(np.float32)
    idx = np.int32 if m.nnz < 2**31 else np.int64
    with warnings.catch_warnings():  # torch warns that sparse CSR is "beta"; it is what we need
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(idx)),
            torch.from_numpy(m.indices.astype(idx)),
            torch.from_numpy(m.data),
            size=m.shape,
            device=device,
            check_invariants=False,
        )


class CentredOperator:
    """A = (M − row-mean) restricted to a set of rows S: A w = 1_S ⊙ (M w − mean_S(M w)).

    S defaults to all K rows; `restrict` gives the operator of one CV training fold (same sparse
    tensors, only a row mask).  `adjoint` is Mᵀ r and is Aᵀ r only for r centred on S and zero off S,
    which holds for every residual FISTA forms (A w − y_c with y_c centred on S).
    """

    def __init__(self, m: torch.Tensor, mt: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self.m, self.mt, self.mask = m, mt, mask  # mask: (K, 1) float 0/1 or None

    @classmethod
    def from_scipy(cls, membership: scipy.sparse.spmatrix, device: str | torch.device = "cpu") -> CentredOperator:
        csr = scipy.sparse.csr_matrix(membership)
        device = torch.device(device)
        return cls(_to_torch_csr(csr, device), _to_torch_csr(csr.T.tocsr(), device))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.m.shape)  # type: ignore[return-value]

    def restrict(self, rows: np.ndarray) -> CentredOperator:
        mask = torch.zeros(self.shape[0], 1, device=self.m.device)
        mask[torch.as_tensor(rows, device=self.m.device)] = 1.0
        return CentredOperator(self.m, self.mt, mask)

    def centre(self, y: torch.Tensor) -> torch.Tensor:
        """Centre (K, b) columns over S and zero them off S."""
        if self.mask is None:
            return y - y.mean(0, keepdim=True)
        return (y - (y * self.mask).sum(0, keepdim=True) / self.mask.sum()) * self.mask

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.centre(self.m @ w)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        return self.mt @ r

    def norm_sq(self, iters: int = 30, seed: int = 0) -> float:
        """‖A‖₂² by power iteration on AᵀA, times 1.05: the estimate approaches from below and a
        step longer than 1/L can make FISTA diverge, while 5% too short a step costs ~5% iterations."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(self.shape[1], 1, generator=g).to(self.m.device)
        est = 0.0
        for _ in range(iters):
            v = v / torch.linalg.vector_norm(v)
            v = self.adjoint(self.forward(v))
            est = float(torch.linalg.vector_norm(v))
        return 1.05 * est if est > 0 else 1.0


def lambda_max(op: CentredOperator, y_c: torch.Tensor) -> torch.Tensor:
    """Smallest λ with the all-zero Lasso solution, per column: ‖Aᵀ y_c‖∞ (y_c centred on op's rows)."""
    return op.adjoint(y_c).abs().amax(0)


def lasso_fista(
    op: CentredOperator,
    y_c: torch.Tensor,
    lam: torch.Tensor,
    lipschitz: float,
    *,
    w0: torch.Tensor | None = None,
    max_iter: int = 2000,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, int]:
    """min_w ½‖y_c − A w‖² + λ_j‖w‖₁ for every column j of y_c (K, b) at once; returns (w (n, b), iterations).

    FISTA with step 1/L and the gradient-based adaptive restart of O'Donoghue & Candès (momentum is
    reset per column when it points uphill), which makes Lasso converge linearly instead of oscillating.
    """
    n, b = op.shape[1], y_c.shape[1]
    w = torch.zeros(n, b, device=y_c.device) if w0 is None else w0.clone()
    z, t = w.clone(), torch.ones(1, b, device=y_c.device)
    thresh = (lam / lipschitz).reshape(1, b)
    it = 0
    for it in range(1, max_iter + 1):
        grad = op.adjoint(op.forward(z) - y_c)
        u = z - grad / lipschitz
        w_new = u - u.clamp(-thresh, thresh)  # soft-thresholding
        step = w_new - w
        restart = ((z - w_new) * step).sum(0, keepdim=True) > 0
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        beta = torch.where(restart, 0.0, (t - 1) / t_new)
        t = torch.where(restart, 1.0, t_new)
        z = w_new + beta * step
        change = torch.linalg.vector_norm(step, dim=0) / torch.linalg.vector_norm(w_new, dim=0).clamp_min(1e-30)
        w = w_new
        if bool((change < tol).all()):
            break
    return w, it


def cv_folds(k: int, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out rows of each fold: a seeded permutation of the K subsets cut into nearly equal parts."""
    return np.array_split(np.random.default_rng(seed).permutation(k), folds)


def choose_lambda_cv(
    op: CentredOperator, y: torch.Tensor, settings: RecoverySettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column fraction of λ_max with the lowest mean held-out squared error over the folds.

    Candidates are the null model (fraction 1: w = 0, intercept only) and lambda_grid.  Each fold fits
    on its training rows at fraction·(its own λ_max) along the path large → small, predicts the held-out
    rows with the training intercept, and scores the mean squared error.  Rule: plain minimum, ties to
    the smaller λ.  Not the one-standard-error rule: it deliberately moves to larger λ, i.e. towards
    zero, and with 5 folds its SE is itself noisy; for attribution, losing true influential examples
    costs more than small spurious scores.  The null model still wins whenever it predicts best.
    Returns (fractions (b,), mean held-out errors (len(grid)+1, b), candidates ordered small → large λ).
    """
    k, b = y.shape
    grid = sorted(settings.lambda_grid, reverse=True)
    errors = torch.zeros(len(grid) + 1, b, device=y.device)
    for held in cv_folds(k, settings.cv_folds, settings.cv_seed):
        train = np.setdiff1d(np.arange(k), held)
        fold = op.restrict(train)
        y_tr = fold.centre(y)
        lmax = lambda_max(fold, y_tr)
        lip = fold.norm_sq()
        held_t = torch.as_tensor(held, device=y.device)
        y_mean_tr = y[train].mean(0)

        def held_error(w: torch.Tensor | None) -> torch.Tensor:
            if w is None:
                return ((y[held_t] - y_mean_tr) ** 2).mean(0)
            mw = op.m @ w
            pred = mw[held_t] + (y_mean_tr - mw[torch.as_tensor(train, device=y.device)].mean(0))
            return ((y[held_t] - pred) ** 2).mean(0)

        errors[0] += held_error(None)
        w = None
        for g, frac in enumerate(grid, start=1):
            w, _ = lasso_fista(fold, y_tr, frac * lmax, lip, w0=w, max_iter=settings.max_iter, tol=settings.cv_tol)
            errors[g] += held_error(w)
    errors /= settings.cv_folds
    # Flip to small → large λ so argmin's first-index tie-break prefers less regularisation.
    errors = errors.flip(0)
    fractions = torch.tensor(list(reversed([1.0] + grid)), device=y.device)
    return fractions[errors.argmin(0)], errors


def ridge_factor(op: CentredOperator, membership: scipy.sparse.spmatrix, alpha: float) -> tuple[tuple, float]:
    """Cholesky factor of A Aᵀ + α' I (K×K, float64) with α' = alpha·trace(A Aᵀ)/K; returns (factor, α')."""
    mm = scipy.sparse.csr_matrix(membership, dtype=np.float64)
    g = (mm @ mm.T).toarray()
    g = g - g.mean(0, keepdims=True) - g.mean(1, keepdims=True) + g.mean()  # A Aᵀ = C M Mᵀ C
    a = alpha * float(np.trace(g)) / g.shape[0]
    return scipy.linalg.cho_factor(g + a * np.eye(g.shape[0])), a


def ridge(op: CentredOperator, factor: tuple, y_c: np.ndarray) -> torch.Tensor:
    """Dual ridge w = Aᵀ (A Aᵀ + α' I)⁻¹ y_c for y_c (K, b) centred; (A Aᵀ + α'I)⁻¹ keeps 1⊥, so Aᵀ = Mᵀ."""
    z = scipy.linalg.cho_solve(factor, y_c)
    return op.adjoint(torch.as_tensor(z, dtype=torch.float32, device=op.m.device))


def recover(
    membership: scipy.sparse.csr_matrix,
    responses: np.ndarray,
    settings: RecoverySettings = RecoverySettings(),
    *,
    device: str = "cpu",
    progress: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """responses is (Q, K). Yields, batch by batch of queries, (query_indices (b,), scores (b, n) float32, lambdas (b,)).

    Never builds a dense K×n or Q×n matrix for all queries at once (n can be millions; only b×n at a time).
    lambdas are the absolute Lasso penalties used (λ_max where the answer is all-zero), or for ridge α'.
    """
    if not scipy.sparse.issparse(membership) or membership.ndim != 2:
        raise ConfigError(f"membership must be a 2-D scipy.sparse matrix (K subsets × n examples), got {type(membership)}")
    k, n = membership.shape
    responses = np.asarray(responses)
    if responses.ndim != 2 or responses.shape[1] != k:
        raise ConfigError(
            f"responses have shape {responses.shape} but membership has K={k} subsets; "
            "pass a (queries, K) array (one query: responses.reshape(1, -1))"
        )
    if k < 2 or n < 1:
        raise ConfigError(f"membership has shape {membership.shape}; need at least 2 subsets and 1 example")
    if not np.isfinite(responses).all():
        bad = np.unique(np.nonzero(~np.isfinite(responses))[0])
        raise ConfigError(f"responses contain NaN/inf for {bad.size} queries (first: {bad[:5].tolist()}); fix or drop them")
    if settings.solver == "lasso" and settings.lambda_rule == "cv" and settings.cv_folds > k:
        raise ConfigError(f"cv_folds={settings.cv_folds} exceeds the number of subsets K={k}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} requested but torch sees no CUDA device; use device='cpu'")

    op = CentredOperator.from_scipy(membership, device)
    if settings.solver == "ridge":
        factor, alpha = ridge_factor(op, membership, settings.ridge_alpha)
    else:
        lip = op.norm_sq()

    starts = range(0, responses.shape[0], settings.query_batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"recovery ({settings.solver})", unit="batch")
    for start in starts:
        idx = np.arange(start, min(start + settings.query_batch, responses.shape[0]))
        y64 = responses[idx].T.astype(np.float64)  # (K, b); centre in float64, solve in float32
        y_c64 = y64 - y64.mean(0, keepdims=True)
        if settings.solver == "ridge":
            w = ridge(op, factor, y_c64)
            lams = np.full(idx.size, alpha)
        else:
            y_c = torch.as_tensor(y_c64, dtype=torch.float32, device=op.m.device)
            lmax = lambda_max(op, y_c)
            if settings.lambda_rule == "fixed":
                fracs = torch.full_like(lmax, settings.lambda_fraction)
            else:
                y = torch.as_tensor(y64, dtype=torch.float32, device=op.m.device)
                fracs, _ = choose_lambda_cv(op, y, settings)
            # Cold start: warm starts along the path cost more here (each λ still needs the same tail
            # of iterations to settle the support), e.g. 400 vs 120 iterations at fraction 0.05.
            w, _ = lasso_fista(op, y_c, fracs * lmax, lip, max_iter=settings.max_iter, tol=settings.tol)
            w[:, fracs >= 1.0] = 0.0  # the null model won the CV: exactly zero
            lams = (fracs * lmax).cpu().numpy().astype(np.float64)
        yield idx, w.T.contiguous().cpu().numpy(), lams
