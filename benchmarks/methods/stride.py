"""STRIDE through the engine's public API: fit operators, measure responses, recover per-example scores.

The score store keeps only top-k and non-zeros (DESIGN.md); LDS needs every example's score, so the dense scores
come from the same recovery call the store is written from (`stride_engine.recovery.recover`), on the run's saved
design and responses.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from stride_engine import Examples, Membership, Stride, preset
from stride_engine.fusion import fused_batches, peer_scores_path
from stride_engine.recovery import recover

from ..settings.base import ExampleSet, Setting


def stride(setting: Setting, preset_name: str = "cpu-smoke", run_dir: str | None = None, **overrides: Any) -> np.ndarray:
    config = preset(preset_name, **overrides)
    with tempfile.TemporaryDirectory(prefix="stride-bench-") as scratch:
        folder = Path(run_dir) if run_dir else Path(scratch)
        engine = Stride(setting.adapter(), config, folder, progress=False).fit(_examples(setting.train))
        return dense_scores(engine, folder, engine.responses(_examples(setting.queries)))


def dense_scores(engine: Stride, folder: Path, responses: np.ndarray, name: str = "queries") -> np.ndarray:
    """Every example's score for every query (queries × train), from the run in `folder` and its responses; with
    `fuse` set, fused with the peer's scores the engine kept for the set, as the engine's own score store fuses them."""
    membership = Membership.load(Path(folder) / "design.npz")
    scores = np.zeros((responses.shape[0], membership.num_examples))
    batches = recover(membership.matrix, responses, engine.recovery_settings(), groups=engine.groups())
    if engine.config.fuse != "none":
        batches = fused_batches(batches, np.load(peer_scores_path(engine.run, name, engine.config.fuse)), engine.config.fuse_weight)
    for rows, values, _ in batches:
        scores[rows] = values
    return scores


def _examples(examples: ExampleSet) -> Examples:
    n = len(examples)
    return Examples(examples.tensors, list(examples.ids), np.arange(n), list(examples.domains or [None] * n))


REGISTRY = {"stride": stride}
