"""The floor every method must clear: random scores."""

from __future__ import annotations

import numpy as np

from ..settings.base import Setting


def random_scores(setting: Setting, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((len(setting.queries), len(setting.train)))


REGISTRY = {"random": random_scores}
