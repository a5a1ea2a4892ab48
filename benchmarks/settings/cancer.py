"""Setting 4, a classifier the engine was not tuned on: scikit-learn's bundled breast-cancer table (569 tumours,
30 measurements, benign or malignant; no download), standardised, and a torch MLP 30 → 64 → 64 → 2, trained and
retrained as tabular.py says. Every STRIDE configuration run here was chosen on the other settings.

Two classes a small MLP separates almost perfectly: the model is sure of most queries, so their losses saturate,
which is the case that once left queries with no score.
"""

from __future__ import annotations

import numpy as np

from .tabular import TabularMLPSetting


class CancerSetting(TabularMLPSetting):
    name = "cancer"
    SCALES = {
        "smoke": dict(num_train=200, num_queries=20, hidden=32, steps=100),
        "full": dict(num_train=469, num_queries=100, hidden=64, steps=100),
    }

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_breast_cancer  # bundled with scikit-learn: no download

        table = load_breast_cancer()
        features = table.data
        return (features - features.mean(axis=0)) / features.std(axis=0), table.target
