"""Responses: how much each operator moves each query's loss (METHOD step 3, measurement).

y[q, k] = m_base(q) − m_k(q), where m is the measurement (the loss, or minus the log-odds of the correct output:
adapters.ModelAdapter.example_measurements); positive means training on subset k helps query q. No gradients: the
prefix runs once per query, then (query, operator) pairs go through the suffix in micro-batches. Measurements and
their differences are kept in float64: a saturated loss moves by less than float32 can hold.
"""

from __future__ import annotations

import numpy as np
import torch
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
