"""What every benchmark setting provides, and what every attribution method may use.

A setting is a model trained on a known training set, a set of query examples, and a way to retrain the same
model on any subset of the training set (the ground truth the methods are judged against). Batches use the
engine's tensor conventions, so STRIDE's adapters and the peers' loss functions read the same rows:
- classifier: {"x": float (b, features), "y": long (b,)}
- causal-lm:  {"input_ids": long (b, T), "attention_mask": long (b, T), "target_mask": float (b, T)}
  (`target_mask[:, t]` weighs the prediction of token t+1 from position t; see stride_engine.corpus.token_batch)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from stride_engine.adapters import ModelAdapter

Batch = dict[str, torch.Tensor]


@dataclass
class ExampleSet:
    """Row-aligned examples: tensors with a leading example dimension, plus texts where the examples are text."""

    tensors: Batch
    ids: list[str]
    texts: list[str] | None = None
    domains: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, index: Sequence[int] | slice | torch.Tensor) -> Batch:
        if not isinstance(index, (slice, torch.Tensor)):
            index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return {key: value[index] for key, value in self.tensors.items()}


class Setting(ABC):
    """One benchmark setting. Subclasses set `name`, `kind` ("classifier" | "causal-lm"), `train` and `queries`."""

    name: str
    kind: str
    train: ExampleSet
    queries: ExampleSet

    @abstractmethod
    def model(self) -> nn.Module:
        """The model trained on the full training set (eval mode, CPU); built once and cached on disk."""

    @abstractmethod
    def adapter(self) -> ModelAdapter:
        """The stride_engine adapter for `model()`."""

    def tokenizer(self) -> Any | None:
        return None

    @abstractmethod
    def example_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Per-example loss (b,), differentiable w.r.t. the model's parameters (mean token CE for LMs)."""

    @abstractmethod
    def retrain(self, masks: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        """Train one model per row of `masks` (bool, (M, n_train)) with the matching seed; return the query
        losses, float (M, n_queries). This is the ground truth's only source."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Everything that determines the model and the ground truth (sizes, hyper-parameters, seeds, data)."""
