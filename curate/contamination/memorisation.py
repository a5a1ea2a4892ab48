"""The memorisation signal: how well the audited model knows each benchmark item, from its own token probabilities.

Per item, on "question + answer" as the model reads it (the question as the prompt, the answer as the completion):

- `loss`: mean negative log-likelihood of the answer's tokens given the question (of the question's tokens when
  the item has no answer); a seen item is easier;
- `min_k_pp`: Min-K%++ (Zhang et al., 2024), reference-free: each token's log-probability standardised by the
  mean and spread of log-probabilities under the model's own next-token distribution at that place,
  `(log p(x_t) - E_z[log p(z)]) / std_z[log p(z)]`, averaged over the lowest `k` share of the item's tokens (the
  tokens the model finds least likely). A seen text has no very surprising token, so its score is higher;
- `reference_gap` (with a reference model that did not see the corpus): `loss_reference - loss`, how much
  easier the audited model finds the item than a model that never saw it.

The signal is about the item, not about a document: it says the model may have seen the item, never where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl
import torch

from stride_engine import Queries
from stride_engine.corpus import encode_queries

from ..errors import CurateError
from .items import BenchmarkItem


@dataclass(frozen=True)
class MemorisationSettings:
    k: float = 0.2  # Min-K%++'s share of tokens (the paper's default is 20%)
    batch_size: int = 16

    def check(self) -> None:
        if not 0 < self.k <= 1:
            raise CurateError(f"Min-K%++'s k is a share of the tokens, in (0, 1]; got {self.k}")


def item_queries(items: Sequence[BenchmarkItem], tokenizer, window: int) -> Queries:
    """Each item as the engine's query: the question as the prompt, the answer as the completion (cut to the window)."""
    from ..core.targets import fit_to_window

    queries = Queries(
        [item.key for item in items],
        [item.question if item.answer else "" for item in items],
        [item.answer if item.answer else item.question for item in items],
    )
    fitted, _, _ = fit_to_window(queries, tokenizer, window, long_text="cut")
    return fitted


def memorisation_scores(
    model_dir: Path | str, items: Sequence[BenchmarkItem], settings: MemorisationSettings = MemorisationSettings(),
    reference_dir: Path | str | None = None, device: str = "cpu",
) -> pl.DataFrame:
    """benchmark, item_id, loss, min_k_pp (and reference_loss, reference_gap with a reference model)."""
    settings.check()
    loss, min_k = _score(model_dir, items, settings, device)
    table = pl.DataFrame({
        "benchmark": [i.benchmark for i in items], "item_id": [i.id for i in items], "loss": loss, "min_k_pp": min_k,
    })
    if reference_dir is not None:
        reference_loss, _ = _score(reference_dir, items, settings, device)
        table = table.with_columns(pl.Series("reference_loss", reference_loss)).with_columns(
            (pl.col("reference_loss") - pl.col("loss")).alias("reference_gap")
        )
    return table


def _score(model_dir, items, settings: MemorisationSettings, device: str) -> tuple[np.ndarray, np.ndarray]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..proxy.retrain import max_positions

    if not (Path(model_dir) / "config.json").is_file():
        raise CurateError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).to(device).eval()
    window = max_positions(AutoConfig.from_pretrained(model_dir)) or 1 << 30
    queries = item_queries(items, tokenizer, window)
    losses, scores = [], []
    for start in range(0, len(queries), settings.batch_size):
        rows = slice(start, start + settings.batch_size)
        batch = encode_queries(Queries(queries.ids[rows], queries.prompts[rows], queries.completions[rows]), tokenizer, window)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits.float()
        loss, min_k = _token_statistics(logits.cpu(), batch["input_ids"], batch["target_mask"], batch["attention_mask"], settings.k)
        losses.append(loss)
        scores.append(min_k)
    return np.concatenate(losses), np.concatenate(scores)


def _token_statistics(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor, attention: torch.Tensor,
                      k: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row: mean NLL over the completion's tokens, and Min-K%++ over every predicted token (position t predicts
    token t+1; `target_mask[:, t]` marks the completion's predictions)."""
    log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    targets = input_ids[:, 1:]
    token_log_prob = log_probs.gather(-1, targets[..., None])[..., 0]
    probs = log_probs.exp()
    mean = (probs * log_probs).sum(-1)
    spread = ((probs * log_probs.square()).sum(-1) - mean.square()).clamp_min(1e-12).sqrt()
    standardised = (token_log_prob - mean) / spread
    completion = target_mask[:, :-1].double()
    predicted = attention[:, 1:].double()
    loss = -(token_log_prob * completion).sum(-1) / completion.sum(-1).clamp_min(1)
    min_k = np.zeros(len(logits))
    for row in range(len(logits)):
        values = standardised[row][predicted[row] > 0].numpy()
        lowest = np.sort(values)[: max(1, int(np.ceil(k * len(values))))]
        min_k[row] = float(lowest.mean())
    return loss.numpy(), min_k
