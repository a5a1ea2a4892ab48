"""MixMin (Thudi et al. 2025, "MixMin: Finding Data Mixtures via Convex Minimization").

For cross-entropy, the model a mixture of sources would give is (at the optimum) the mixture of the models each
source gives alone; so one proxy per domain, and the target's loss of the mixed predictor,

    L(w) = - mean_x log sum_d w_d p_d(x),         p_d(x): domain d's proxy's probability of target item x,

is convex in w and minimised over the simplex. Items are whole sequences (the predictor of a mixture of documents is
the mixture of sequence distributions), scored on the target items the methods see, never on the evaluation items.
Minimised by exponentiated gradient (mirror descent on the simplex), which keeps w a distribution at every step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import CurateError


def sequence_logprobs(model_dir: Path, texts: list[str], seq_len: int, batch_size: int = 16) -> np.ndarray:
    """log p(text) under a causal LM (bos text eos, the proxies' training format; texts longer than seq_len are
    scored in consecutive windows, each conditioned on its own start)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    windows, owner = [], []
    for i, ids in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
        stream = start + ids + end
        for offset in range(0, max(len(stream) - 1, 1), seq_len):
            windows.append(stream[offset: offset + seq_len + 1][: seq_len])
            owner.append(i)
    totals = np.zeros(len(texts))
    with torch.no_grad():
        for b in range(0, len(windows), batch_size):
            batch = windows[b: b + batch_size]
            width = max(len(w) for w in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for j, w in enumerate(batch):
                ids[j, : len(w)] = torch.tensor(w)
                mask[j, : len(w)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            token_logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
            for j, value in enumerate(token_logp.sum(1).tolist()):
                totals[owner[b + j]] += value
    return totals


def mixmin_weights(logprobs: np.ndarray, iterations: int = 2000, step: float = 0.5) -> tuple[np.ndarray, float]:
    """The simplex point minimising -mean_x log sum_d w_d exp(logprobs[x, d]); returns it and the minimised loss
    (nats per item). logprobs: (items, domains)."""
    logprobs = np.asarray(logprobs, dtype=float)
    if logprobs.ndim != 2 or logprobs.shape[0] < 1 or logprobs.shape[1] < 2:
        raise CurateError(f"MixMin needs item x domain log-probabilities of at least 1 item and 2 domains, got {logprobs.shape}")
    # per item, probabilities relative to its best domain: the objective's gradient without overflow
    relative = np.exp(logprobs - logprobs.max(axis=1, keepdims=True))
    weights = np.full(logprobs.shape[1], 1.0 / logprobs.shape[1])
    for _ in range(iterations):
        mixed = relative @ weights
        gradient = -(relative / mixed[:, None]).mean(axis=0)
        # the gradient is -1 at the optimum for every domain in the support; its spread sets the pace
        weights = weights * np.exp(-step * (gradient - gradient.min()))
        weights /= weights.sum()
    loss = float(-(np.log(relative @ weights) + logprobs.max(axis=1)).mean())
    return weights, loss
