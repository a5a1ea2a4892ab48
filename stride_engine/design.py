"""The measurement design: which training examples belong to which of the K subsets (METHOD step 1).

Every example joins d distinct subsets drawn uniformly at random, so M ∈ {0,1}^{K×n} is the adjacency matrix
of a random left-d-regular bipartite graph, an expander with high probability. M is stored sparse (CSR, int32
indices) with its seed, so every later stage and every worker sees the same design.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .artifacts import atomic_path
from .errors import ConfigError


@dataclass(frozen=True)
class Membership:
    matrix: sp.csr_matrix  # (K, n) float32 ones
    subsets_per_example: int
    seed: int

    @property
    def num_subsets(self) -> int:
        return self.matrix.shape[0]

    @property
    def num_examples(self) -> int:
        return self.matrix.shape[1]

    def members(self, subset: int) -> np.ndarray:
        """Example indices in one subset."""
        start, end = self.matrix.indptr[subset], self.matrix.indptr[subset + 1]
        return self.matrix.indices[start:end]

    def save(self, path: Path | str) -> None:
        with atomic_path(Path(path)) as tmp:
            with open(tmp, "wb") as handle:  # np.savez would append ".npz" to a bare temp name
                np.savez_compressed(
                    handle,
                    indptr=self.matrix.indptr,
                    indices=self.matrix.indices,
                    shape=np.asarray(self.matrix.shape),
                    subsets_per_example=self.subsets_per_example,
                    seed=self.seed,
                )

    @classmethod
    def load(cls, path: Path | str) -> "Membership":
        with np.load(path) as data:
            indptr, indices = data["indptr"], data["indices"]
            matrix = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=tuple(data["shape"]))
            return cls(matrix, int(data["subsets_per_example"]), int(data["seed"]))


REDRAWS = 20  # designs drawn before giving up on one without an empty subset


def random_membership(num_examples: int, num_subsets: int, subsets_per_example: int, seed: int) -> Membership:
    """The seeded design. A draw that leaves a subset empty (likely when n·d is near K: 469 examples, K = 512, d = 8
    leave one empty at some seeds) is redrawn from the same generator, so the seed still fixes the design and a draw
    that had no empty subset is unchanged; after REDRAWS draws the sizes are refused as too small."""
    if num_examples < 1:
        raise ConfigError("the design needs at least one training example")
    if not 1 <= subsets_per_example <= num_subsets:
        raise ConfigError(f"d={subsets_per_example} must be between 1 and K={num_subsets}")
    rng = np.random.default_rng(seed)
    for _ in range(REDRAWS):
        matrix = _draw(rng, num_examples, num_subsets, subsets_per_example)
        empty = np.flatnonzero(np.diff(matrix.indptr) == 0)
        if not len(empty):
            return Membership(matrix, subsets_per_example, seed)
    raise ConfigError(
        f"{len(empty)} of K={num_subsets} subsets received no example (n={num_examples}, d={subsets_per_example}) in "
        f"each of {REDRAWS} draws: use fewer subsets (K) or more subsets per example (d)"
    )


def _draw(rng: np.random.Generator, num_examples: int, num_subsets: int, subsets_per_example: int) -> sp.csr_matrix:
    # d distinct subsets per example: the d smallest of K uniform draws. Blocks keep memory at ~64 MB for any n.
    block = max(1, (1 << 23) // num_subsets)
    picks = []
    for start in range(0, num_examples, block):
        noise = rng.random((min(block, num_examples - start), num_subsets))
        picks.append(np.argpartition(noise, subsets_per_example - 1, axis=1)[:, :subsets_per_example])
    rows = np.sort(np.concatenate(picks), axis=1).astype(np.int32).ravel()
    cols = np.repeat(np.arange(num_examples, dtype=np.int32), subsets_per_example)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(num_subsets, num_examples), dtype=np.float32
    )
    matrix.sort_indices()
    matrix.indices = matrix.indices.astype(np.int32)
    matrix.indptr = matrix.indptr.astype(np.int32)
    return matrix
