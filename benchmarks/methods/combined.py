"""Scores made of several fits or several methods: STRIDE ensembles over independent designs, and STRIDE fused with a
gradient peer (the paper's contamination result fuses LoGra with STRIDE).

- `ensemble`: the mean of `fits` STRIDE fits whose seeds (design, initialisation, batches) are seed, seed + 1, …:
  the scores are in the same units (a loss change per example), so they average as they are; or, with
  `standardize`, each fit standardised per query first. TRAK averages over
  checkpoints for the same reason: each fit's noise is its own.
- `fused`: each method's scores standardised per query (over the training examples) and summed with weights
  `stride_weight` and 1 − stride_weight: `stride_engine.fusion.fuse`, the function `curate attribute --fuse`
  runs. Standardising puts methods of different units on one scale; a sum (not a rank average) keeps the scores
  additive, which is what LDS and a budget of documents read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stride_engine.fusion import fuse, standardised  # the product's own fusion, measured here

from ..settings.base import Setting
from . import MethodSpec
from .stride import stride


def ensemble(setting: Setting, fits: int = 4, seed: int = 0, standardize: bool = False, **stride_options: Any) -> np.ndarray:
    """With `standardize`, each fit's scores are standardised per query before the mean, so that a fit whose responses
    happen to be larger does not outweigh the others (results/seed_spread.md)."""
    if fits < 1:
        raise ValueError(f"fits={fits} must be at least 1")
    scaled = standardised if standardize else np.asarray
    return np.mean([scaled(stride(setting, seed=seed + i, **stride_options)) for i in range(fits)], axis=0)


def fused(setting: Setting, peer: str, peer_options: dict | None = None, stride_weight: float = 0.5, fits: int = 1,
          **stride_options: Any) -> np.ndarray:
    """STRIDE (an ensemble of `fits`) fused with `peer` ("module:function", e.g. the benchmark's dattri LoGra)."""
    peer_scores = MethodSpec("peer", peer, peer_options or {}).resolve()(setting, **(peer_options or {}))
    return fuse(ensemble(setting, fits, **stride_options), peer_scores, stride_weight)
