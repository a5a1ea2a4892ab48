"""Online domain reweighting: DoReMi and DoGE, each a proxy model that learns the mixture while it trains.

Both train a small proxy (the base's configuration and tokenizer, fresh seeded weights, the project's proxy recipe
of proxy/retrain.py: packed bos+text+eos rows, AdamW 0.9/0.95, weight decay 0.01 on matrices, clip 1, warm-up then
cosine to 0) on minibatches stratified over the domains, move the domain weights alpha every step by an
exponentiated-gradient update, and output the average of alpha over the steps.

DoReMi (Xie et al. 2023, Algorithm 1) needs no target. A reference model is trained on the reference mixture; the
proxy then runs group DRO against it:

    lambda[i] = sum over domain i's tokens of max(loss_proxy - loss_ref, 0) / number of domain i's tokens
    alpha     = (1 - c) * softmax(log alpha + eta * lambda) + c / D
    proxy loss = sum_i alpha[i] * (mean token loss on domain i)

A domain gains weight while the proxy lags what a model can learn of it; a domain of noise, which the reference
cannot learn either, has ~0 excess loss and loses weight.

DoGE (Fan et al. 2024), the out-of-domain variant: a domain gains weight when a step on it lowers the target's loss,
to first order lr_t * <g_i, g_target>:

    alpha = softmax(log alpha + eta * lr_t * <g_i, g_target>),   the proxy steps along sum_i alpha[i] g_i
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...errors import CurateError
from ...proxy.retrain import (
    DEFAULT_LEARNING_RATE, WARMUP_FRACTION, _fresh_model, _load_base, _lr_factor, _packed_rows, data_files,
    max_positions, read_texts, train_rows,
)

__all__ = ["DOGE_STEP_SIZE", "DOREMI_SMOOTHING", "DOREMI_STEP_SIZE", "doge_weights", "domain_rows", "doremi_weights"]

DOREMI_STEP_SIZE = 1.0  # the paper's eta (their code's reweight_eta)
DOREMI_SMOOTHING = 1e-3  # the paper's c
# DoGE's eta is 1/mu of their code: mu = 0.05 in their out-of-domain configs (config/doge_ood/*.json), so eta = 20.
# Kept, because it already moves the weights of a tiny proxy in a few hundred steps: with gradients clipped to
# norm 1 the alignments are at most 1, and alpha moves by exp(eta * sum_t lr_t * alignment gap), sum_t lr_t ~ 0.3
# for 200 steps at lr 3e-3 (warm-up, cosine to 0). Measured on the test's toy (hidden 32, 1 layer; three domains,
# one the target's kind of text), the target-like domain's averaged weight after 200 steps was 0.37 at eta 1, 0.50
# at 5, 0.84 at 20, and at 100 alpha was one-hot by step 50.
DOGE_STEP_SIZE = 20.0
HISTORY_POINTS = 20  # the history keeps alpha this many times, evenly over the run (every step of a shorter run)
# Cost unit: a forward plus backward pass over `batch_size` rows, `steps` times. A forward alone is counted as a
# third of that (the backward costs about twice the forward).
FORWARD_SHARE = 1 / 3

Rows = tuple[torch.Tensor, torch.Tensor]  # (ids (n, seq_len), lengths (n,))


# ------------------------------------------------------------------------------------------------ data


def _rows_by_domain(domain_files: dict, tokenizer, seq_len: int, progress: bool) -> dict[str, Rows]:
    rows: dict[str, Rows] = {}
    for name, files in domain_files.items():
        try:
            ids, lengths, documents = _packed_rows(read_texts(data_files(files)), tokenizer, seq_len, progress)
        except CurateError as err:
            raise CurateError(f"domain {name!r}: {err}") from err
        if documents == 0:
            raise CurateError(f"domain {name!r} has no documents (no non-empty 'text' field in {files})")
        rows[name] = (ids, lengths)
    return rows


def _check_domains(domain_files) -> None:
    if not isinstance(domain_files, dict) or len(domain_files) < 2:
        raise CurateError("domain_files must map at least two domain names to their files (reweighting one domain is moot)")
    unnamed = [name for name in domain_files if not isinstance(name, str) or not name]
    if unnamed:
        raise CurateError(f"domain names must be non-empty strings, got {unnamed!r}")


def _check_seq_len(config, base: Path, seq_len: int) -> None:
    positions = max_positions(config)
    if seq_len < 2 or (positions is not None and seq_len > positions):
        raise CurateError(f"seq_len {seq_len} must be between 2 and base model {base}'s {positions} positions")


def domain_rows(domain_files: dict[str, Path | list[Path]], base: Path, seq_len: int) -> dict[str, Rows]:
    """Per domain, its documents as packed rows (bos text eos, cut into `seq_len` tokens): (ids (n, seq_len),
    lengths (n,)). CurateError naming the domain when it has no documents or its files cannot be read."""
    _check_domains(domain_files)
    config, tokenizer = _load_base(base)
    _check_seq_len(config, base, seq_len)
    return _rows_by_domain(domain_files, tokenizer, seq_len, progress=False)


class _Shuffles:
    """Endless seeded shuffles of `n` rows, a fresh permutation per epoch (as train_rows draws its batches)."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator, self.order = n, generator, []

    def take(self, k: int) -> list[int]:
        while len(self.order) < k:
            self.order += torch.randperm(self.n, generator=self.generator).tolist()
        taken, self.order = self.order[:k], self.order[k:]
        return taken


class _Strata:
    """Minibatches of `batch_size` rows stratified over the domains: each domain gets batch_size // D rows and the
    remainder goes to the domains in turn, so over D steps every domain gets the same number of rows (the papers
    sample domains uniformly; a fixed split removes that sampling noise from alpha)."""

    def __init__(self, rows: dict[str, Rows], batch_size: int, generator: torch.Generator):
        self.rows = list(rows.values())
        self.shuffles = [_Shuffles(len(ids), generator) for ids, _ in self.rows]
        self.batch_size = batch_size

    def sizes(self, step: int) -> list[int]:
        count = len(self.rows)
        share, extra = divmod(self.batch_size, count)
        return [share + ((d - step) % count < extra) for d in range(count)]

    def draw(self, step: int) -> list[Rows]:
        """Per domain, (ids, lengths) of its rows for this step."""
        parts = []
        for (ids, lengths), shuffle, size in zip(self.rows, self.shuffles, self.sizes(step)):
            picked = shuffle.take(size)
            parts.append((ids[picked], lengths[picked]))
        return parts


# ------------------------------------------------------------------------------------------------ training pieces


def _token_losses(model, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token losses (rows, width - 1), zero where the predicted token is padding, and the mask of real ones
    (the tokens the model's own `labels` loss averages over)."""
    width = int(lengths.max())
    ids = ids[:, :width]
    real = torch.arange(width)[None, :] < lengths[:, None]
    logits = model(input_ids=ids, attention_mask=real.long(), use_cache=False).logits
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    mask = real[:, 1:].float()
    return losses.view(len(ids), width - 1) * mask, mask


def _mean_loss(model, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    losses, mask = _token_losses(model, ids, lengths)
    return losses.sum() / mask.sum().clamp(min=1)


def _optimizer(model, learning_rate: float, steps: int):
    """train_rows's optimiser and schedule, for loops that build their own gradients."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate, betas=(0.9, 0.95),
    )
    warmup = _warmup(steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, steps, warmup))
    return optimizer, scheduler


def _warmup(steps: int) -> int:
    return max(1, round(WARMUP_FRACTION * steps))


def _update(optimizer, scheduler, model) -> None:
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _check(steps: int, batch_size: int, domains: int, step_size: float, learning_rate: float) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise CurateError(f"steps must be a positive integer, got {steps!r}")
    if batch_size < domains:
        raise CurateError(f"batch_size {batch_size} is smaller than the {domains} domains: every step needs a row of each")
    if not step_size > 0 or not math.isfinite(step_size):
        raise CurateError(f"step_size must be a positive number, got {step_size!r}")
    if not learning_rate > 0:
        raise CurateError(f"learning_rate must be positive, got {learning_rate!r}")


class _Record:
    """alpha's running average, its last value and its history (HISTORY_POINTS snapshots, the last at the end)."""

    def __init__(self, names: list[str], steps: int):
        self.names, self.steps = names, steps
        self.points = {max(1, round(k * steps / HISTORY_POINTS)) for k in range(1, HISTORY_POINTS + 1)}
        self.total = torch.zeros(len(names), dtype=torch.float64)
        self.last = torch.full((len(names),), 1 / len(names), dtype=torch.float64)
        self.history: list[dict] = []

    def add(self, step: int, alpha: torch.Tensor) -> None:
        self.total += alpha
        self.last = alpha
        if step + 1 in self.points:
            self.history.append({"step": step + 1, "weights": self._named(alpha)})

    def _named(self, weights: torch.Tensor) -> dict[str, float]:
        weights = weights / weights.sum()  # exact sum 1 after float rounding
        return {name: float(w) for name, w in zip(self.names, weights)}

    def result(self, method: str, settings: dict, started: float, proxy_runs: float) -> dict:
        return {"method": method, "weights": self._named(self.total / self.steps), "final": self._named(self.last),
                "history": self.history, "settings": settings, "seconds": round(time.perf_counter() - started, 3),
                "proxy_runs": round(proxy_runs, 4)}


def _files_setting(domain_files: dict) -> dict[str, list[str]]:
    return {name: [str(p) for p in (files if isinstance(files, (list, tuple)) else [files])]
            for name, files in domain_files.items()}


# ------------------------------------------------------------------------------------------------ DoReMi


def _reference_rows(rows: dict[str, Rows], weights: list[float], count: int, generator: torch.Generator) -> Rows:
    """`count` rows drawn from the reference mixture for train_rows: each domain's share of them (largest
    remainder, so a weight w gives round(w * count) rows) from its own seeded shuffles. Sampling the rows to the
    weights first, rather than stratifying each batch, lets the reference be a plain train_rows run."""
    exact = [w * count for w in weights]
    counts = [math.floor(x) for x in exact]
    for d in sorted(range(len(exact)), key=lambda d: counts[d] - exact[d])[: count - sum(counts)]:
        counts[d] += 1
    ids, lengths = [], []
    for (domain_ids, domain_lengths), k in zip(rows.values(), counts):
        picked = _Shuffles(len(domain_ids), generator).take(k)
        ids.append(domain_ids[picked])
        lengths.append(domain_lengths[picked])
    return torch.cat(ids), torch.cat(lengths)


def _reference_weights(names: list[str], reference_weights: dict | None) -> list[float]:
    if reference_weights is None:
        return [1 / len(names)] * len(names)
    if not isinstance(reference_weights, dict) or set(reference_weights) != set(names):
        given = sorted(reference_weights) if isinstance(reference_weights, dict) else reference_weights
        raise CurateError(f"reference_weights must name exactly the domains {sorted(names)}, got {given}")
    weights = [reference_weights[name] for name in names]
    if not all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights) or abs(sum(weights) - 1) > 1e-4:
        raise CurateError(f"reference_weights must be non-negative and sum to 1, got {reference_weights}")
    return [float(w) for w in weights]


def doremi_weights(domain_files: dict[str, Path | list[Path]], base: Path, steps: int, seed: int = 0, batch_size: int = 8,
                   seq_len: int = 128, reference_weights: dict[str, float] | None = None,
                   step_size: float = DOREMI_STEP_SIZE, smoothing: float = DOREMI_SMOOTHING,
                   learning_rate: float = DEFAULT_LEARNING_RATE, progress: bool = False) -> dict:
    """DoReMi's domain weights: a reference trained `steps` steps on `reference_weights` (uniform by default),
    then a group-DRO proxy for `steps` steps; the weights are the proxy's alpha averaged over its steps.
    Deterministic for `seed`."""
    started = time.perf_counter()
    _check_domains(domain_files)
    names = list(domain_files)
    _check(steps, batch_size, len(names), step_size, learning_rate)
    if not 0 <= smoothing <= 1:
        raise CurateError(f"smoothing must be between 0 and 1, got {smoothing!r}")
    ref_weights = _reference_weights(names, reference_weights)
    config, tokenizer = _load_base(base)
    _check_seq_len(config, base, seq_len)
    rows = _rows_by_domain(domain_files, tokenizer, seq_len, progress)
    generator = torch.Generator().manual_seed(seed)

    reference = _fresh_model(config, seed)
    ref_ids, ref_lengths = _reference_rows(rows, ref_weights, steps * batch_size, generator)
    train_rows(reference, ref_ids, ref_lengths, steps, batch_size, learning_rate, seed, _warmup(steps), progress=progress)
    reference.eval().requires_grad_(False)

    proxy = _fresh_model(config, seed)
    proxy.train()
    optimizer, scheduler = _optimizer(proxy, learning_rate, steps)
    strata = _Strata(rows, batch_size, generator)
    count = len(names)
    alpha = torch.full((count,), 1 / count, dtype=torch.float64)
    record = _Record(names, steps)
    for step in tqdm(range(steps), desc="DoReMi proxy", unit="step", disable=not progress):
        losses, excess = [], []
        for ids, lengths in strata.draw(step):
            # Per domain, one forward of each model (D small batches rather than one masked batch: the same
            # tokens, and the per-domain sums need no bookkeeping).
            proxy_losses, mask = _token_losses(proxy, ids, lengths)
            with torch.no_grad():
                ref_losses, _ = _token_losses(reference, ids, lengths)
            n = mask.sum().clamp(min=1)
            losses.append(proxy_losses.sum() / n)
            # Per token, then clipped: a token the proxy already predicts better than the reference adds nothing.
            excess.append(float(((proxy_losses.detach() - ref_losses).clamp(min=0) * mask).sum() / n))
        alpha = torch.softmax(alpha.log() + step_size * torch.tensor(excess, dtype=torch.float64), dim=0)
        alpha = (1 - smoothing) * alpha + smoothing / count
        # The proxy minimises the alpha-weighted domain losses with alpha fixed (Algorithm 1's step on theta).
        loss = sum(float(a) * domain_loss for a, domain_loss in zip(alpha, losses))
        loss.backward()
        _update(optimizer, scheduler, proxy)
        record.add(step, alpha)

    settings = {"domain_files": _files_setting(domain_files), "base": str(base), "steps": steps, "seed": seed,
                "batch_size": batch_size, "seq_len": seq_len, "reference_weights": dict(zip(names, ref_weights)),
                "step_size": step_size, "smoothing": smoothing, "learning_rate": learning_rate,
                "warmup_steps": _warmup(steps), "rows": {name: len(ids) for name, (ids, _) in rows.items()}}
    # Reference run (1) + proxy run (1) + the reference's forward on every proxy batch.
    return record.result("doremi", settings, started, proxy_runs=2 + FORWARD_SHARE)


# ------------------------------------------------------------------------------------------------ DoGE


def _flat_gradient(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """The loss's gradient as one vector, clipped to norm 1 as DoGE's code clips each domain's gradient (at
    max_grad_norm) before the inner products: alignments are then at most 1 whatever the loss scale, so one
    step size suits any model."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
    return flat / max(1.0, float(flat.norm()))


def _set_gradient(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        p.grad = flat[offset: offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def doge_weights(domain_files: dict[str, Path | list[Path]], base: Path, target_texts: list[str], steps: int, seed: int = 0,
                 batch_size: int = 8, seq_len: int = 128, step_size: float = DOGE_STEP_SIZE,
                 learning_rate: float = DEFAULT_LEARNING_RATE, progress: bool = False) -> dict:
    """DoGE's domain weights for the target `target_texts` (out-of-domain: the target is not one of the domains):
    a proxy trained `steps` steps on the alpha-weighted domain gradients; the weights are alpha averaged over the
    steps. Deterministic for `seed`."""
    started = time.perf_counter()
    _check_domains(domain_files)
    names = list(domain_files)
    _check(steps, batch_size, len(names), step_size, learning_rate)
    target_texts = [text for text in (target_texts or []) if isinstance(text, str) and text.strip()]
    if not target_texts:
        raise CurateError("target_texts is empty: DoGE needs texts of the target to align the domains' gradients with")
    config, tokenizer = _load_base(base)
    _check_seq_len(config, base, seq_len)
    rows = _rows_by_domain(domain_files, tokenizer, seq_len, progress)
    target_ids, target_lengths, _ = _packed_rows(iter(target_texts), tokenizer, seq_len, progress=False)
    generator = torch.Generator().manual_seed(seed)

    proxy = _fresh_model(config, seed)
    proxy.train()
    params = [p for p in proxy.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer(proxy, learning_rate, steps)
    strata = _Strata(rows, batch_size, generator)
    target_shuffle = _Shuffles(len(target_ids), generator)
    # The target's minibatch is as large as a domain's share, so g_target is no noisier than a g_i.
    target_rows = math.ceil(batch_size / len(names))
    count = len(names)
    alpha = torch.full((count,), 1 / count, dtype=torch.float64)
    record = _Record(names, steps)
    for step in tqdm(range(steps), desc="DoGE proxy", unit="step", disable=not progress):
        grads = torch.stack([_flat_gradient(_mean_loss(proxy, ids, lengths), params) for ids, lengths in strata.draw(step)])
        picked = target_shuffle.take(target_rows)
        target_grad = _flat_gradient(_mean_loss(proxy, target_ids[picked], target_lengths[picked]), params)
        lr_t = scheduler.get_last_lr()[0]  # the rate this step's update will use, as their code reads it
        alignment = (grads @ target_grad).double()
        alpha = torch.softmax(alpha.log() + step_size * lr_t * alignment, dim=0)
        _set_gradient(params, alpha.float() @ grads)
        _update(optimizer, scheduler, proxy)
        record.add(step, alpha)

    settings = {"domain_files": _files_setting(domain_files), "base": str(base), "target_texts": len(target_texts),
                "target_rows_per_step": target_rows, "steps": steps, "seed": seed, "batch_size": batch_size,
                "seq_len": seq_len, "step_size": step_size, "learning_rate": learning_rate,
                "warmup_steps": _warmup(steps), "rows": {name: len(ids) for name, (ids, _) in rows.items()}}
    # Counted in rows through a forward and backward pass: the domains' gradients together cover the batch_size
    # rows once (D backward passes on batch_size / D rows each), plus the target's rows. The D + 1 separate small
    # passes cost more wall time than that on small models; `seconds` measures it.
    return record.result("doge", settings, started, proxy_runs=1 + target_rows / batch_size)
