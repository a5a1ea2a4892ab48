"""PNG plots of what people would rather see than read: the operators' training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_training_curves(curves: dict[str, list[float]], path: Path, smooth: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    names = [name for name, values in curves.items() if np.isfinite(values).any()]
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for axis, name in zip(axes[0], names):
        values = np.asarray(curves[name], dtype=float)
        steps = np.flatnonzero(np.isfinite(values))
        axis.plot(steps, values[steps], alpha=0.3, linewidth=0.8)
        if len(steps) >= smooth:
            kernel = np.ones(smooth) / smooth
            axis.plot(steps[smooth - 1 :], np.convolve(values[steps], kernel, mode="valid"), linewidth=1.5)
        axis.set_title(name.replace("_", " "))
        axis.set_xlabel("step")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
