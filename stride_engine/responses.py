"""Responses: how much each operator moves each query's loss (METHOD step 3, measurement).

y[q, k] = loss_base(q) − loss_k(q); positive means training on subset k helps query q. No gradients: the prefix
runs once per query, then (query, operator) pairs go through the suffix in micro-batches.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .adapters import Batch, ModelAdapter, move, select_rows
from .operators import SteeringBank, steered_logits


@torch.no_grad()
def measure_responses(
    adapter: ModelAdapter, bank: SteeringBank, queries: Batch, form: str, layer: int, micro_batch: int = 64,
    device: str = "cpu", progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (responses (Q, K), base losses (Q,))."""
    queries = move(queries, device)
    num_queries = len(next(iter(queries.values())))
    num_operators = bank.coefficients.shape[0]
    states, base = [], []
    for start in range(0, num_queries, micro_batch):
        batch = select_rows(queries, slice(start, start + micro_batch))
        states.append(adapter.capture(batch, form, layer))
        base.append(adapter.example_losses(adapter.finish(states[-1], batch, form, layer), batch))
    states, base = torch.cat(states), torch.cat(base)
    # All (query, operator) pairs, query-major; each micro-batch mixes operators freely.
    pair_query = torch.arange(num_queries, device=device).repeat_interleave(num_operators)
    pair_operator = torch.arange(num_operators, device=device).repeat(num_queries)
    steered = torch.empty(len(pair_query), device=device)
    for start in tqdm(range(0, len(pair_query), micro_batch), desc="responses", disable=not progress):
        rows = slice(start, start + micro_batch)
        batch = select_rows(queries, pair_query[rows])
        logits = steered_logits(adapter, bank, states[pair_query[rows]], batch, pair_operator[rows], form, layer)
        steered[rows] = adapter.example_losses(logits, batch)
    responses = base[:, None] - steered.view(num_queries, num_operators)
    return responses.cpu().numpy().astype(np.float32), base.cpu().numpy()
