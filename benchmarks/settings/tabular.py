"""Classifier settings: a small tabular dataset bundled with scikit-learn (no download) and a torch MLP
features → h → h → classes on it.

Retraining is exact and cheap, so the ground truth is explicit retraining: many MLPs are trained at once as one
batched network (stacked weights, batched matmuls), each on its own subset (a per-model example mask) from its own
seed. Training is full-batch Adam for a fixed number of steps, so a model depends only on its subset and its seed.
A subclass says which data (`load`) and at which sizes (`SCALES`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stride_engine.adapters import SequentialClassifierAdapter

from .base import Batch, ExampleSet, Setting


class TabularMLPSetting(Setting):
    kind = "classifier"
    SCALES: dict[str, dict[str, int]]  # scale -> num_train, num_queries, hidden, steps

    def __init__(self, scale: str = "full", seed: int = 0, learning_rate: float = 3e-3, weight_decay: float = 0.0, models_per_batch: int = 128):
        if scale not in self.SCALES:
            raise ValueError(f"unknown scale {scale!r} for the {self.name} setting; known: {sorted(self.SCALES)}")
        self.scale, self.seed = scale, seed
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.models_per_batch = models_per_batch
        sizes = self.SCALES[scale]
        self.hidden, self.steps = sizes["hidden"], sizes["steps"]
        features, labels = self.load()
        order = np.random.default_rng(seed).permutation(len(labels))
        x = torch.tensor(features[order], dtype=torch.float32)
        y = torch.tensor(labels[order], dtype=torch.long)
        self.inputs, self.classes = x.shape[1], int(labels.max()) + 1
        n, q = sizes["num_train"], sizes["num_queries"]
        if n + q > len(labels):
            raise ValueError(f"the {self.name} setting has {len(labels)} examples, fewer than {n} + {q}")
        self.train = ExampleSet({"x": x[:n], "y": y[:n]}, [f"train-{i}" for i in order[:n]])
        self.queries = ExampleSet({"x": x[n : n + q], "y": y[n : n + q]}, [f"query-{i}" for i in order[n : n + q]])
        self._model: nn.Sequential | None = None

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, F) float, labels (N,) int in 0..C−1), before the seeded shuffle."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        ids = hashlib.sha256(" ".join(self.train.ids + self.queries.ids).encode()).hexdigest()[:16]
        return {
            "name": self.name, "scale": self.scale, "seed": self.seed, "num_train": len(self.train),
            "num_queries": len(self.queries), "hidden": self.hidden, "steps": self.steps, "optimizer": "adam full-batch",
            "learning_rate": self.learning_rate, "weight_decay": self.weight_decay, "example_ids": ids,
        }

    def model(self) -> nn.Sequential:
        if self._model is None:
            weights = self._train(np.ones((1, len(self.train)), dtype=bool), [self.seed])
            self._model = self._unstack(weights, 0).eval()
        return self._model

    def adapter(self) -> SequentialClassifierAdapter:
        return SequentialClassifierAdapter(self.model())

    def example_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")

    def retrain(self, masks: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        losses = []
        for start in range(0, len(masks), self.models_per_batch):
            stop = start + self.models_per_batch
            weights = self._train(masks[start:stop], list(seeds[start:stop]))
            with torch.no_grad():
                logits = _batched_forward(weights, self.queries.tensors["x"])
                target = self.queries.tensors["y"].expand(logits.shape[0], -1)
                losses.append(F.cross_entropy(logits.transpose(1, 2), target, reduction="none").numpy())
        return np.concatenate(losses).astype(np.float64)

    def _init_mlp(self, seed: int) -> nn.Sequential:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(self.inputs, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.hidden), nn.ReLU(),
                             nn.Linear(self.hidden, self.classes))

    def _train(self, masks: np.ndarray, seeds: Sequence[int]) -> list[torch.Tensor]:
        if len(masks) != len(seeds):
            raise ValueError(f"{len(masks)} masks but {len(seeds)} seeds")
        weights = _stack([self._init_mlp(seed) for seed in seeds])
        for w in weights:
            w.requires_grad_(True)
        example_weights = torch.as_tensor(masks, dtype=torch.float32)
        example_weights = example_weights / example_weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        optimizer = torch.optim.AdamW(weights, lr=self.learning_rate, weight_decay=self.weight_decay)
        x, y = self.train.tensors["x"], self.train.tensors["y"]
        target = y.expand(len(masks), -1)
        for _ in range(self.steps):
            logits = _batched_forward(weights, x)
            loss = (F.cross_entropy(logits.transpose(1, 2), target, reduction="none") * example_weights).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # the sum over models: each model's gradient is its own subset's mean loss
            optimizer.step()
        return [w.detach() for w in weights]

    def _unstack(self, weights: list[torch.Tensor], index: int) -> nn.Sequential:
        model = self._init_mlp(0)
        with torch.no_grad():
            for j, i in enumerate(_LINEARS):
                model[i].weight.copy_(weights[2 * j][index].T)
                model[i].bias.copy_(weights[2 * j + 1][index, 0])
        return model


_LINEARS = (0, 2, 4)


def _stack(models: list[nn.Sequential]) -> list[torch.Tensor]:
    """[W0 (M,in,out), b0 (M,1,out), W1, b1, W2, b2] from M identical-shape MLPs."""
    out = []
    for i in _LINEARS:
        out.append(torch.stack([m[i].weight.detach().T for m in models]).contiguous())
        out.append(torch.stack([m[i].bias.detach()[None, :] for m in models]).contiguous())
    return out


def _batched_forward(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x (n, features) → logits (M, n, classes) for every stacked model."""
    h = x.expand(weights[0].shape[0], -1, -1)
    for j in range(3):
        h = torch.baddbmm(weights[2 * j + 1], h, weights[2 * j])
        if j < 2:
            h = torch.relu(h)
    return h
