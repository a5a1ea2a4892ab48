"""Ground truth from explicit retraining, computed once per setting and reused by every method.

LDS subsets: `num_subsets` random subsets of `fraction` of the training set, each retrained with its own seed; the
query losses form a small (S, Q) matrix stored with the masks, the setting's description and the seeds in one
`.npz` plus a readable `.json`. A stored file whose description differs from the setting's is never reused.
Retraining runs in blocks with a partial file after each block, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from stride_engine.artifacts import atomic_path, atomic_write_text

from .settings.base import Setting


@dataclass
class GroundTruth:
    masks: np.ndarray  # bool (S, n_train)
    losses: np.ndarray  # float (S, n_queries): each query's loss after retraining on the subset
    seeds: np.ndarray  # int (S,)
    description: dict[str, Any]

    @property
    def benefits(self) -> np.ndarray:
        """-loss: higher = the subset helped the query more (the sign attribution scores use)."""
        return -self.losses


def subset_masks(n: int, num_subsets: int, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    size = round(fraction * n)
    masks = np.zeros((num_subsets, n), dtype=bool)
    for row in masks:
        row[rng.choice(n, size=size, replace=False)] = True
    return masks


def describe(setting: Setting, num_subsets: int, fraction: float, seed: int, shared_init: bool) -> dict[str, Any]:
    return {"setting": setting.describe(), "num_subsets": num_subsets, "fraction": fraction, "seed": seed, "shared_init": shared_init}


def key(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]


def load_or_compute(
    setting: Setting, folder: Path, num_subsets: int, fraction: float, seed: int = 0, shared_init: bool = True,
    block: int = 8, progress: bool = True,
) -> GroundTruth:
    """The stored ground truth for exactly this configuration, or retrain (resuming a partial run) and store it.

    `shared_init`: every retrain starts from the same initialisation (seed `seed`) so that the responses measure
    the data's effect, not seed noise (which is measured separately); False draws one seed per subset.
    """
    description = describe(setting, num_subsets, fraction, seed, shared_init)
    stem = Path(folder) / f"{setting.name}-{key(description)}"
    final, partial = stem.with_suffix(".npz"), stem.with_suffix(".partial.npz")
    if final.is_file():
        return _load(final, description)
    masks = subset_masks(len(setting.train), num_subsets, fraction, seed)
    seeds = np.full(num_subsets, seed) if shared_init else seed * 100_003 + np.arange(num_subsets)
    losses = np.full((num_subsets, len(setting.queries)), np.nan)
    done = 0
    if partial.is_file():
        stored = np.load(partial)
        done = int(stored["done"])
        losses[:done] = stored["losses"][:done]
    with tqdm(total=num_subsets, initial=done, desc=f"ground truth {setting.name}", disable=not progress) as bar:
        while done < num_subsets:
            rows = slice(done, min(done + block, num_subsets))
            losses[rows] = setting.retrain(masks[rows], seeds[rows].tolist())
            done = rows.stop
            _save(partial, masks=masks, losses=losses, seeds=seeds, done=np.int64(done))
            bar.update(rows.stop - rows.start)
    _save(final, masks=masks, losses=losses, seeds=seeds)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(description, indent=2, sort_keys=True) + "\n")
    partial.unlink(missing_ok=True)
    return GroundTruth(masks, losses, seeds, description)


def _save(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _load(path: Path, description: dict[str, Any]) -> GroundTruth:
    stored = np.load(path)
    return GroundTruth(stored["masks"], stored["losses"], stored["seeds"], description)
