"""Quality measures: the linear datamodeling score (LDS) and top-k removal (METHOD.md, "Evaluation")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from .ground_truth import GroundTruth
from .settings.base import Setting


def lds(scores: np.ndarray, truth: GroundTruth) -> np.ndarray:
    """Per-query Spearman correlation, across the ground-truth subsets, between a method's predicted benefit of a
    subset (the sum of the query's scores over its members) and the measured benefit (minus the retrained loss).

    A query whose scores are constant over the subsets (e.g. all zero) gets 0: it predicts nothing.
    """
    if scores.shape != (truth.losses.shape[1], truth.masks.shape[1]):
        raise ValueError(f"scores have shape {scores.shape}; expected (queries, train) = {(truth.losses.shape[1], truth.masks.shape[1])}")
    predicted = truth.masks.astype(np.float64) @ scores.T  # (S, Q)
    result = np.zeros(scores.shape[0])
    for q in range(scores.shape[0]):
        if np.ptp(predicted[:, q]) > 0 and np.ptp(truth.benefits[:, q]) > 0:
            result[q] = spearmanr(predicted[:, q], truth.benefits[:, q]).statistic
    return result


def queries_without_scores(scores: np.ndarray) -> int:
    """Queries whose scores are the same for every training example (all zero, typically): a user asking which
    examples shaped them is told none did."""
    return int((np.ptp(scores, axis=1) == 0).sum())


@dataclass
class RemovalPlan:
    ks: Sequence[int]
    seeds: Sequence[int]
    queries: Sequence[int]  # indices of the queries the removal test is run on


def removal_curve(setting: Setting, scores: np.ndarray, plan: RemovalPlan, baseline: np.ndarray | None = None) -> dict:
    """Remove each query's k highest-scored training examples, retrain (one model per query, k and seed), and
    measure the drop in the query's true-class probability exp(-loss) against the full-data models of the same seeds.

    Returns {"k": [...], "drop_mean": [...], "drop_std": [...]} (std across queries of the seed-averaged drop).
    `baseline` (len(seeds), Q) are the full-data models' query losses; computed when not given.
    """
    n = scores.shape[1]
    if baseline is None:
        baseline = full_data_losses(setting, plan.seeds)
    masks, seeds, cells = [], [], []
    for qi, q in enumerate(plan.queries):
        order = np.argsort(-scores[q], kind="stable")
        for ki, k in enumerate(plan.ks):
            mask = np.ones(n, dtype=bool)
            mask[order[:k]] = False
            for si, seed in enumerate(plan.seeds):
                masks.append(mask)
                seeds.append(seed)
                cells.append((qi, ki, si, q))
    losses = setting.retrain(np.stack(masks), seeds)
    drops = np.zeros((len(plan.queries), len(plan.ks), len(plan.seeds)))
    for row, (qi, ki, si, q) in enumerate(cells):
        drops[qi, ki, si] = np.exp(-baseline[si, q]) - np.exp(-losses[row, q])
    per_query = drops.mean(axis=2)
    return {"k": list(plan.ks), "drop_mean": per_query.mean(axis=0).tolist(), "drop_std": per_query.std(axis=0).tolist()}


def full_data_losses(setting: Setting, seeds: Sequence[int]) -> np.ndarray:
    return setting.retrain(np.ones((len(seeds), len(setting.train)), dtype=bool), list(seeds))
