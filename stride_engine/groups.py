"""Groups of training examples, for grouped recovery (a choice of this project, not of the paper).

Why: the Lasso assumes a query's influence vector is sparse. Much of what matters for data selection is not:
"every arithmetic word problem helps a GSM8K item a little" is a dense effect spread over thousands of chunks,
and K measurements cannot recover a dense n-vector (each subset mixes ~n·d/K chunks, so the matched filter of one
chunk is dominated by the others in its subsets). A dense effect that is shared by *similar* examples is
different: if β = A w + s, with A the one-hot assignment of examples to C groups (C ≪ K) and s sparse, then
y ≈ (M A) w + M s, and M A (K × C: how many chunks of each group each subset holds) is a small, well-posed design.

The groups come from the frozen model itself: k-means on each example's states at the cut, mean-pooled over its
tokens (no labels, no outside embedding model). Recovery then fits w by ridge on M A and runs the Lasso on what
is left (see recovery.py); a chunk's score is w[its group] + s[chunk].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.cluster.vq
import scipy.sparse
import torch

from .adapters import Batch, ModelAdapter, move, select_rows
from .errors import ConfigError


def groups_file(run_root: Path | str, count: int) -> Path:
    """Where a run keeps each chunk's group (chunk_id, group) for `count` groups."""
    return Path(run_root) / "groups" / f"{count}.parquet"


# k-means runs on at most this many examples (a seeded sample); every example is then given its nearest centre, in
# batches. A pool of at most this many chunks is clustered whole, exactly as before the cap existed. At 10M chunks and
# d = 2,048 the whole pool in float64 would be 160 GB; the sample is 1.6 GB and its k-means time does not grow with n.
KMEANS_SAMPLE = 100_000
ASSIGN_BATCH = 65_536


@torch.no_grad()
def pooled_states(adapter: ModelAdapter, batch: Batch, form: str, layer: int, micro_batch: int, device,
                  out_file: Path | None = None) -> np.ndarray:
    """One float32 vector per example: its states at the cut, averaged over real tokens (as is, for non-sequence
    states), written into one preallocated array (no second copy of the pool's states); with `out_file`, an .npy file
    mapped into memory, so the pool's pooled states are file pages the OS can drop, not held memory."""
    batch = move(batch, device)
    rows = len(next(iter(batch.values())))
    pooled = None
    for start in range(0, rows, micro_batch):
        part = select_rows(batch, slice(start, start + micro_batch))
        states = adapter.capture(part, form, layer).float()
        if states.dim() >= 3 and "attention_mask" in part:
            mask = part["attention_mask"].to(states.dtype).reshape(*states.shape[:2], *[1] * (states.dim() - 2))
            states = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        states = states.reshape(len(states), -1).cpu().numpy()
        if pooled is None:
            shape = (rows, states.shape[1])
            pooled = (np.lib.format.open_memmap(out_file, mode="w+", dtype=np.float32, shape=shape) if out_file is not None
                      else np.empty(shape, dtype=np.float32))
        pooled[start:start + len(states)] = states
    return pooled


def _standardiser(features: np.ndarray):
    features = np.asarray(features, dtype=np.float64)
    scale = features.std(axis=0)
    mean, scale = features.mean(axis=0), np.where(scale > 0, scale, 1.0)
    return lambda values: (np.asarray(values, dtype=np.float64) - mean) / scale


def _sample_rows(n: int, seed: int) -> np.ndarray:
    """Every row when the pool fits the cap; else a seeded sample of KMEANS_SAMPLE rows, in order."""
    if n <= KMEANS_SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 12]).choice(n, KMEANS_SAMPLE, replace=False))


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of each point's nearest centre (squared distance, expanded: no points x centres x d array)."""
    distances = (centres ** 2).sum(axis=1)[None, :] - 2.0 * points @ centres.T
    return distances.argmin(axis=1)


def cluster_examples(features: np.ndarray, num_groups: int, seed: int) -> np.ndarray:
    """k-means (k-means++ start, seeded) on standardised features; returns each example's group, 0..C−1. Beyond
    KMEANS_SAMPLE examples the centres come from a seeded sample (standardised by its own mean and spread) and every
    example, in batches, joins its nearest centre."""
    n = len(features)
    if num_groups > n:
        raise ConfigError(f"groups={num_groups} exceeds the number of training examples ({n}); use fewer groups")
    sample = _sample_rows(n, seed)
    points = np.asarray(features[sample], dtype=np.float64)
    standardise = _standardiser(points)
    centres, labels = scipy.cluster.vq.kmeans2(standardise(points), num_groups, minit="++", seed=np.random.default_rng([seed, 11]))
    if len(sample) < n:
        labels = np.concatenate([_nearest(standardise(features[start:start + ASSIGN_BATCH]), centres)
                                 for start in range(0, n, ASSIGN_BATCH)])
    # k-means can leave a group empty; renumber so the groups in use are 0..C'−1
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def nearest_group(features: np.ndarray, groups: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The group of each `new` row: the nearest group centre, in the space the groups were clustered in (the
    training examples' `features`, standardised by their mean and spread: of all of them, or beyond KMEANS_SAMPLE of a
    sample, as cluster_examples does). Places text that is not in the training set, such as a target's queries, among
    the run's groups. The centres are summed in batches of the features."""
    if new.shape[1:] != features.shape[1:]:
        raise ConfigError(f"new features have shape {new.shape[1:]} per row, the groups' {features.shape[1:]}")
    standardise = _standardiser(features[_sample_rows(len(features), 0)])
    count = int(groups.max()) + 1
    sums = np.zeros((count, features.shape[1]))
    for start in range(0, len(features), ASSIGN_BATCH):
        np.add.at(sums, groups[start:start + ASSIGN_BATCH], standardise(features[start:start + ASSIGN_BATCH]))
    centres = sums / np.maximum(np.bincount(groups, minlength=count), 1)[:, None]
    return _nearest(standardise(new), centres).astype(np.int64)


def group_design(membership: scipy.sparse.spmatrix, groups: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """M A: for every subset (row), how many of its examples fall in each group (column); with `weights`, the sum of
    its examples' weights (e.g. their tokens) in each group."""
    weights = np.ones(len(groups)) if weights is None else weights
    assignment = scipy.sparse.csr_matrix(
        (weights, (np.arange(len(groups)), groups)), shape=(len(groups), int(groups.max()) + 1)
    )
    return np.asarray((scipy.sparse.csr_matrix(membership, dtype=np.float64) @ assignment).todense())


def fit_group_effects(design: np.ndarray, y_c: np.ndarray, ridge: float) -> np.ndarray:
    """Per-group influence w (C, b) from centred responses y_c (K, b): ridge on the centred group design.

    The penalty is `ridge` times the mean eigenvalue of GᵀG, so it does not depend on K, d or the group sizes. It
    also settles the one direction the data cannot: subsets have (nearly) equal sizes, so adding a constant to every
    group's w changes nothing measurable, and ridge takes the smallest such w (ranks are unaffected).
    """
    centred = design - design.mean(axis=0, keepdims=True)
    gram = centred.T @ centred
    penalty = ridge * max(np.trace(gram) / len(gram), 1e-12)
    return np.linalg.solve(gram + penalty * np.eye(len(gram)), centred.T @ y_c)


def label_effects(membership: scipy.sparse.spmatrix, labels: np.ndarray, weights: np.ndarray,
                  responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What one unit of weight (e.g. one token) of each labelled kind of example does to the responses, read straight
    off the design: least squares of the responses on X (K × C, the summed weights of each label's examples in each
    subset), with an intercept. Returns (effects (C, b), standard errors (C, b)) for responses (K, b) or (K,).

    Why a regression and not the sum of recovered scores: a label's examples are many (a whole source of a corpus), so
    their shared effect is dense, which is exactly what the sparse recovery cannot see (the module docstring), and
    summing per-example scores adds up every example's shrinkage and noise. The design varies every label's share of
    every subset at random, so C + 1 unknowns from K measurements is a small, honest problem. The standard errors are
    those of each label's contrast with the labels' mean (what comparing labels needs): subsets hold nearly equal
    amounts, so the common level of the effects is weakly identified and says nothing about which label does more.
    """
    labels = np.asarray(labels, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if labels.shape != (membership.shape[1],) or weights.shape != labels.shape:
        raise ConfigError(f"need one label and one weight per example ({membership.shape[1]}), got {labels.shape} "
                          f"and {weights.shape}")
    y = np.asarray(responses, dtype=np.float64)
    single = y.ndim == 1
    y = y[:, None] if single else y
    if len(y) != membership.shape[0]:
        raise ConfigError(f"responses have {len(y)} rows, the design {membership.shape[0]} subsets")
    count = int(labels.max()) + 1
    if membership.shape[0] <= count + 1:
        raise ConfigError(f"{count} labels need more than {count + 1} subsets to be told apart; the design has "
                          f"{membership.shape[0]}")
    design = group_design(membership, labels, weights)
    if np.linalg.matrix_rank(np.column_stack([np.ones(len(design)), design])) < count + 1:
        raise ConfigError("some labels' shares do not vary across subsets independently (a label with no weight, or "
                          "labels that always appear together): their effects cannot be told apart")
    scale = design.std(axis=0)  # columns of equal scale: a well-conditioned solve for labels of any size
    inputs = np.column_stack([np.ones(len(design)), design / scale])
    inverse = np.linalg.inv(inputs.T @ inputs)
    coefficients = inverse @ inputs.T @ y
    residual = y - inputs @ coefficients
    noise = (residual ** 2).sum(axis=0) / (len(y) - inputs.shape[1])  # (b,)
    covariance = inverse[1:, 1:] / np.outer(scale, scale)  # of the effects, per unit of noise
    contrast = np.eye(count) - 1.0 / count
    contrast_variance = np.einsum("ij,jk,ik->i", contrast, covariance, contrast)
    effects = coefficients[1:] / scale[:, None]
    errors = np.sqrt(np.outer(contrast_variance, noise))
    return (effects[:, 0], errors[:, 0]) if single else (effects, errors)


def held_out_label_effects(membership: scipy.sparse.spmatrix, labels: np.ndarray, weights: np.ndarray,
                           responses: np.ndarray, query_rows: np.ndarray, doc_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label: what one unit of its weight does to its *own* held-out examples beyond what the labels do on
    average (the contrast label_effects can identify), and that contrast's standard error. Returns (C,), (C,).

    The queries are training examples (`query_rows`, with their `responses` (Q, K)); each is held out by leaving
    out of its label's mean the subsets holding any example of its document, so its own membership (which always
    helps it) does not count. Why: training on more of a kind of text helps held-out text of that kind more than
    other kinds do, in any language model that learns at all. A label whose operators read against its own text
    says the design's label-level reading is not measuring what a retrained model would do (curate's reweighting
    checks this before it trusts that reading).
    """
    labels = np.asarray(labels, dtype=np.int64)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    y = np.asarray(responses, dtype=np.float64)
    if y.shape != (len(query_rows), membership.shape[0]):
        raise ConfigError(f"need one response per query row and subset ({len(query_rows)} x {membership.shape[0]}), "
                          f"got {y.shape}")
    count = int(labels.max()) + 1
    query_labels = labels[query_rows]
    if set(np.unique(query_labels)) != set(range(count)):
        raise ConfigError("every label needs at least one held-out query: some label has none")
    by_document = scipy.sparse.csr_matrix(
        (np.ones(len(doc_index)), (np.arange(len(doc_index)), doc_index)), shape=(len(doc_index), int(doc_index.max()) + 1))
    # (K, documents): whether a subset holds any example of a document
    holds = (scipy.sparse.csr_matrix(membership, dtype=np.float64) @ by_document).tocsc()
    kept = np.ones_like(y, dtype=bool)
    for i, row in enumerate(query_rows):
        kept[i, holds[:, doc_index[row]].nonzero()[0]] = False
    columns = []
    for label in range(count):
        mine = query_labels == label
        columns.append(np.where(kept[mine], y[mine], 0.0).sum(axis=0) / np.maximum(kept[mine].sum(axis=0), 1))
    effects, errors = label_effects(membership, labels, weights, np.column_stack(columns))
    contrasts = effects - effects.mean(axis=0, keepdims=True)
    return np.diag(contrasts).copy(), np.diag(errors).copy()


__all__ = ["groups_file", "pooled_states", "cluster_examples", "nearest_group", "group_design", "fit_group_effects",
           "label_effects", "held_out_label_effects"]
