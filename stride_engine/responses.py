"""Responses: how much each operator moves each query's loss (METHOD step 3, measurement).

y[q, k] = m_base(q) − m_k(q), where m is the measurement (the loss, or minus the log-odds of the correct output:
adapters.ModelAdapter.example_measurements); positive means training on subset k helps query q. No gradients: the
prefix runs once per query, then (query, operator) pairs go through the suffix in micro-batches. Measurements and
their differences are kept in float64: a saturated loss moves by less than float32 can hold.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .adapters import Batch, ModelAdapter, UndefinedMeasurement, move, select_rows
from .errors import ConfigError
from .operators import SteeringBank, steered_logits


@torch.no_grad()
def measure_responses(
    adapter: ModelAdapter, bank: SteeringBank, queries: Batch, form: str, layer: int, micro_batch: int = 64,
    device: str = "cpu", progress: bool = True, measurement: str = "loss", query_ids: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (responses (Q, K), base measurements (Q,)). A query whose measurement is undefined stops it before
    anything is measured further, with an error naming the query (`query_ids`)."""
    queries = move(queries, device)
    num_queries = len(next(iter(queries.values())))
    num_operators = bank.coefficients.shape[0]
    steered = torch.empty(num_queries, num_operators, device=device, dtype=torch.float64)
    base = torch.empty(num_queries, device=device, dtype=torch.float64)
    pair_operator = torch.arange(num_operators, device=device)
    bar = tqdm(total=num_queries * num_operators, desc="responses", disable=not progress)
    for start in range(0, num_queries, micro_batch):
        block = slice(start, min(start + micro_batch, num_queries))
        batch = select_rows(queries, block)
        states = adapter.capture(batch, form, layer)
        base_logits = adapter.finish(states, batch, form, layer)
        try:
            base[block] = adapter.example_measurements(base_logits, batch, measurement)
        except UndefinedMeasurement as err:
            names = [query_ids[block.start + r] if query_ids else f"#{block.start + r}" for r in err.rows]
            raise ConfigError(f"the measurement ({measurement}) is undefined for query {', '.join(map(repr, names))}: "
                              f"{err.reason}") from None
        if form == "logit" and bank.readout == "full":
            scored = _scored_positions(adapter, states, base_logits, batch)
            if scored is not None:
                steered[block] = _steered_at_positions(bank, *scored, block.stop - block.start,
                                                       micro_batch * base_logits[0].numel(), measurement)
                bar.update((block.stop - block.start) * num_operators)
                continue
        # All (query, operator) pairs of this block, query-major; each micro-batch mixes operators freely. In the
        # logit form the base outputs are shared by every operator, so the output head runs once per query.
        pairs = torch.arange(block.stop - block.start, device=device).repeat_interleave(num_operators)
        operators = pair_operator.repeat(block.stop - block.start)
        for first in range(0, len(pairs), micro_batch):
            rows = pairs[first:first + micro_batch]
            sub_batch = select_rows(batch, rows)
            logits = steered_logits(adapter, bank, states[rows], sub_batch, operators[first:first + micro_batch], form, layer,
                                    base_logits[rows] if form == "logit" else None)
            steered[block.start + rows, operators[first:first + micro_batch]] = adapter.example_measurements(
                logits, sub_batch, measurement)
            bar.update(len(rows))
    bar.close()
    responses = base[:, None] - steered
    return responses.cpu().numpy(), base.cpu().numpy()


def _scored_positions(adapter: ModelAdapter, states: torch.Tensor, base_logits: torch.Tensor, batch: Batch):
    """The logit form's scored positions of a block of queries, flattened: (states (P, d), base outputs (P, V),
    correct outputs (P,), weights (P,), query of each (P,)); None for an adapter that does not expose them.
    `scored_outputs` selects positions only, so applied to the states it gives the states those outputs came from."""
    scored = adapter.scored_outputs(base_logits, batch)
    if scored is None:
        return None
    outputs, targets, weights = scored
    at_states = adapter.scored_outputs(states, batch)[0]
    counted = (weights > 0).reshape(-1)
    query = torch.arange(outputs.shape[0], device=outputs.device).repeat_interleave(outputs.shape[1])
    return (at_states.reshape(-1, at_states.shape[-1])[counted], outputs.reshape(-1, outputs.shape[-1])[counted].float(),
            targets.reshape(-1)[counted], weights.reshape(-1)[counted].double(), query[counted])


def _steered_at_positions(bank: SteeringBank, states: torch.Tensor, base: torch.Tensor, targets: torch.Tensor,
                          weights: torch.Tensor, query: torch.Tensor, num_queries: int, budget: int,
                          measurement: str) -> torch.Tensor:
    """(queries, K) steered measurements in the logit form with the full bank: the quantity `example_measurements`
    gives for `steered_logits`, computed only where a position is scored. The edits of a chunk of operators at every
    scored position are one matrix product (codes × [a_k]ᵀ) instead of one small product per (query, operator) row,
    and unscored positions (padding, a prompt) cost nothing. Operators go `budget // (P × V)` at a time."""
    codes = bank.basis(states)  # (P, r)
    num_operators, rank = bank.coefficients.shape[0], bank.coefficients.shape[-1]
    positions, outputs = base.shape
    per_chunk = max(1, budget // max(1, base.numel()))
    index = targets.clamp(0, outputs - 1)[:, None, None]
    totals = torch.zeros(num_queries, dtype=torch.float64, device=base.device).index_add_(0, query, weights)
    result = torch.empty(num_queries, num_operators, dtype=torch.float64, device=base.device)
    for first in range(0, num_operators, per_chunk):
        chunk = slice(first, min(first + per_chunk, num_operators))
        coefficients = bank.coefficients[chunk]  # (k, V, r)
        k = coefficients.shape[0]
        logits = (codes @ coefficients.reshape(k * outputs, rank).T).view(positions, k, outputs).add_(base[:, None])
        at = index.expand(-1, k, -1)
        correct = logits.gather(-1, at).squeeze(-1)  # (P, k)
        rest = (logits.scatter_(-1, at, float("-inf")).logsumexp(dim=-1) - correct).double()
        per_position = (F.softplus(rest) if measurement == "loss" else rest) * weights[:, None]
        sums = torch.zeros(num_queries, k, dtype=torch.float64, device=base.device).index_add_(0, query, per_position)
        result[:, chunk] = sums / totals[:, None]
    return result
