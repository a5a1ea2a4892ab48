"""Setting 1, a controlled classifier (the paper's MNIST-MLP figure, at this machine's scale).

scikit-learn's bundled 8×8 handwritten digits (no download), a torch MLP 64 → h → h → 10, trained and retrained
as tabular.py says. STRIDE's benchmark configuration (suites.DIGITS_STRIDE) was tuned on this setting.
"""

from __future__ import annotations

import numpy as np

from .tabular import TabularMLPSetting


class DigitsSetting(TabularMLPSetting):
    name = "digits"
    SCALES = {
        # examples, queries, hidden width, full-batch Adam steps
        "smoke": dict(num_train=400, num_queries=20, hidden=32, steps=100),
        "full": dict(num_train=1300, num_queries=100, hidden=64, steps=100),
    }

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        digits = load_digits()
        return digits.data / 16.0, digits.target
