"""RegMix (Liu et al. 2024, "RegMix: Data Mixture as Regression for Language Model Pre-training").

Small proxies trained on random mixtures (curate.reweight.methods.mixtures.dirichlet_mixtures) give (mixture, target
loss) pairs; a LightGBM regressor fits loss from the weights; a large sample of new random mixtures from the same
sampler is scored by the regressor and the best `top_k` averaged (the paper's final step, which smooths the
regressor's noise). Their regressor settings (regression_fitting/regression.ipynb) are kept, except that a leaf may
hold 3 samples: LightGBM's default of 20 would let 24 proxies make at most one split.
"""

from __future__ import annotations

import numpy as np

from ...errors import CurateError
from .mixtures import REGMIX_STRENGTHS, REGMIX_TEMPERATURE

LIGHTGBM = {"objective": "regression", "boosting_type": "gbdt", "n_estimators": 1000, "learning_rate": 1e-2,
            "min_child_samples": 3, "random_state": 42, "verbose": -1}


def regmix_weights(mixtures: np.ndarray, losses: np.ndarray, prior: np.ndarray, seed: int = 0, candidates: int = 100_000,
                   top_k: int = 100) -> tuple[np.ndarray, dict]:
    """The mixture RegMix picks, and the fit's diagnostics (in-sample Spearman rho of the regressor)."""
    try:
        import lightgbm
    except ImportError as err:
        raise CurateError("RegMix needs lightgbm (pip install 'curate[bench]')") from err
    from scipy.stats import spearmanr

    mixtures, losses = np.asarray(mixtures, dtype=float), np.asarray(losses, dtype=float)
    if len(mixtures) < 4 or len(mixtures) != len(losses):
        raise CurateError(f"RegMix needs at least 4 (mixture, loss) pairs of equal count, got {len(mixtures)} and {len(losses)}")
    model = lightgbm.LGBMRegressor(**LIGHTGBM).fit(mixtures, losses)
    pool = candidate_mixtures(prior, candidates, seed + 1)
    predicted = model.predict(pool)
    best = pool[np.argsort(predicted)[:top_k]].mean(axis=0)
    fit = float(spearmanr(model.predict(mixtures), losses).statistic)
    return best / best.sum(), {"train_spearman": fit, "candidates": len(pool), "top_k": top_k}


def candidate_mixtures(prior: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Many candidate mixtures at once: the sampler without its rejection and rounding (no proxy trains on them)."""
    rng = np.random.default_rng(seed)
    smoothed = np.asarray(prior, dtype=float) ** REGMIX_TEMPERATURE
    smoothed /= smoothed.sum()
    strengths = rng.choice(REGMIX_STRENGTHS, size=count)
    return np.stack([rng.dirichlet(smoothed * s) for s in strengths])
