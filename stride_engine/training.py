"""Training the steering operators jointly, base model frozen (METHOD step 2).

One optimiser step draws `operators_per_step` subsets; for each, `fidelity_batch` member examples and
`stability_batch` non-members (with `full_batch`: every subset, each with all of its members). The states at the
cut were computed once for every example (the frozen prefix) and are reused here by every operator. Losses:
1. fidelity: the steered model's loss on the operator's own members;
2. stability: KL(base ‖ steered) on non-members, so an operator cannot become a global shortcut;
3. linearity (every `linearity_every` steps): each probe example's responses y_S to a sample S of operators should
   be explained additively by the design: the ridge residual of y_S on the sketch (M R)_S is penalised, example by
   example (additivity of the probe batch's mean response alone would allow per-example effects that do not add up).
In the logit form on a sequence model, `loss_positions` scores terms 1 and 2 on a random sample of each micro-batch's
positions: the vocabulary-wide outputs are most of a step's cost, and a position's output depends on its own state.
All a_k live in one tensor: with `optimizer="adam"` the operators not drawn in a step still move on their momentum;
"masked-adam" leaves them, and their moments, untouched (lazy Adam). Batches are drawn from a generator seeded by
(seed, step), and the optimiser state is checkpointed, so an interrupted training resumes to exactly the weights an
uninterrupted one reaches. Under torchrun every process draws the same batch and computes its share of the micro-batches;
gradients are summed before each step (distributed.py), and only the first process writes checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .adapters import Batch, ModelAdapter, select_rows
from .artifacts import atomic_path, atomic_write_text
from .config import StrideConfig
from .design import Membership
from .operators import SteeringBank, steered_logits

CURVE_NAMES = ("fidelity", "stability", "linearity", "fidelity_gain")


@dataclass
class StateCache:
    """States at the cut for every training example, plus the token batch each row came from. The states may live
    off the compute device (a file mapped into memory): `rows` gathers a micro-batch's rows and moves them over."""

    states: torch.Tensor  # (n, ...): on the compute device, or on the CPU backed by a file
    batch: Batch  # row-aligned tensors for all n examples, on the compute device
    compute_dtype: torch.dtype | None = None  # what `rows` returns, when the states are stored narrower (bfloat16)

    @property
    def device(self) -> torch.device:
        return next(iter(self.batch.values())).device

    def rows(self, rows: np.ndarray) -> tuple[torch.Tensor, Batch]:
        index = torch.as_tensor(rows, device=self.device)
        states = self.states[index.to(self.states.device)].to(self.device, self.compute_dtype or self.states.dtype)
        return trim_padding(states, select_rows(self.batch, index))

    @property
    def sequence(self) -> bool:
        """Whether a row's states are a sequence (one per token), so that loss positions can be drawn."""
        return self.states.dim() >= 3

    def width(self, rows: np.ndarray) -> int:
        """The sequence length `rows(rows)` returns, without gathering the states."""
        if "attention_mask" not in self.batch or self.states.dim() < 3:
            return self.states.shape[1] if self.states.dim() >= 3 else 1
        return int(self.batch["attention_mask"][torch.as_tensor(rows, device=self.device)].sum(dim=1).max())


class RecomputedStates:
    """StateCache's interface without the states (state_cache="recompute"): the rows training reads are run through
    the frozen prefix when it reads them. Nothing of size n x length x d exists; each step pays the prefix's forward
    pass for its rows instead."""

    def __init__(self, adapter, batch: Batch, form: str, layer: int):
        self.adapter, self.batch, self.form, self.layer = adapter, batch, form, layer
        self.sequence = self.rows(np.arange(1))[0].dim() >= 3

    @property
    def device(self) -> torch.device:
        return next(iter(self.batch.values())).device

    def rows(self, rows: np.ndarray) -> tuple[torch.Tensor, Batch]:
        batch = select_rows(self.batch, torch.as_tensor(rows, device=self.device))
        if "attention_mask" in batch:  # cut the shared right-padding first: the prefix never runs on it
            width = int(batch["attention_mask"].sum(dim=1).max())
            batch = {key: value[:, :width] if value.dim() >= 2 else value for key, value in batch.items()}
        with torch.no_grad():
            return self.adapter.capture(batch, self.form, self.layer), batch

    def width(self, rows: np.ndarray) -> int:
        if "attention_mask" not in self.batch:
            return 1
        return int(self.batch["attention_mask"][torch.as_tensor(rows, device=self.device)].sum(dim=1).max())


def trim_padding(states: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, Batch]:
    """Cut right-padding shared by every row of a token batch: causal models never look at it, so it is pure cost."""
    if "attention_mask" not in batch or states.dim() < 3:
        return states, batch
    width = int(batch["attention_mask"].sum(dim=1).max())
    return states[:, :width], {key: value[:, :width] for key, value in batch.items()}


@dataclass
class TrainingLog:
    curves: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in CURVE_NAMES})

    def append(self, **values: float) -> None:
        for name in CURVE_NAMES:
            self.curves[name].append(float(values.get(name, float("nan"))))


def new_bank(config: StrideConfig, num_operators: int, in_dim: int, out_dim: int) -> SteeringBank:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.form == "logit" and config.logit_bank == "head":
            return SteeringBank(num_operators, in_dim, in_dim, config.rank, config.basis, config.basis_hidden, readout="head")
        return SteeringBank(num_operators, in_dim, out_dim, config.rank, config.basis, config.basis_hidden)


def train_operators(
    adapter: ModelAdapter,
    cache: StateCache,
    membership: Membership,
    bank: SteeringBank,
    config: StrideConfig,
    layer: int,
    checkpoint_dir: Path,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainingLog:
    """Train `bank` in place; checkpoints go to `checkpoint_dir`, from which a rerun resumes."""
    optimizer = _OPTIMIZERS[config.optimizer](bank, config.learning_rate)
    log = TrainingLog()
    start = _resume(checkpoint_dir, bank, optimizer, log)
    sketch = _sketch(membership, config).to(cache.device)
    trainer = _Steps(adapter, cache, membership, bank, config, layer, sketch)
    progress = progress and distributed.is_main()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="operators", disable=not progress)
    for step in bar:
        rng = np.random.default_rng([config.seed, step])
        optimizer.zero_grad()
        values, drawn = trainer.fidelity_and_stability(rng)
        if config.linearity_weight > 0 and step % config.linearity_every == 0:
            values["linearity"], sampled = trainer.linearity(rng)
            drawn = np.union1d(drawn, sampled)
        distributed.sum_gradients(bank.parameters())  # with several processes: each computed its share of the rows
        optimizer.step(drawn)
        log.append(**values)
        if progress:
            bar.set_postfix(fid=f"{values['fidelity']:.3f}", gain=f"{values['fidelity_gain']:.4f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps and distributed.is_main():
            _checkpoint(checkpoint_dir, step + 1, bank, optimizer, log)
        if on_step is not None:
            on_step(step + 1)
    return log


class _Steps:
    def __init__(self, adapter, cache, membership, bank, config, layer, sketch):
        self.adapter, self.cache, self.membership, self.bank = adapter, cache, membership, bank
        self.config, self.layer, self.sketch = config, layer, sketch
        self.n = membership.num_examples
        self.device = cache.device

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows, their operators, and whether each row is a member (fidelity) or not (stability)."""
        config = self.config
        if config.full_batch:  # every operator, each on all of its members
            subsets = np.arange(self.membership.num_subsets)
        else:
            subsets = rng.choice(self.membership.num_subsets, size=min(config.operators_per_step, self.membership.num_subsets), replace=False)
        rows, operators, is_member = [], [], []
        for subset in subsets:
            members = self.membership.members(subset)
            picked = members if config.full_batch else rng.choice(
                members, size=config.fidelity_batch, replace=len(members) < config.fidelity_batch)
            outsiders = rng.integers(0, self.n, size=4 * config.stability_batch)
            outsiders = outsiders[~np.isin(outsiders, members)][: config.stability_batch]
            rows += [picked, outsiders]
            operators.append(np.full(len(picked) + len(outsiders), subset))
            is_member += [np.ones(len(picked), bool), np.zeros(len(outsiders), bool)]
        return np.concatenate(rows), np.concatenate(operators), np.concatenate(is_member)

    def fidelity_and_stability(self, rng: np.random.Generator) -> tuple[dict[str, float], np.ndarray]:
        """The two terms' values (their gradients accumulated), and the operators they drew."""
        rows, operators, is_member = self._draw(rng)
        n_member, n_other = max(1, is_member.sum()), max(1, (~is_member).sum())
        totals = dict(fidelity=0.0, stability=0.0, fidelity_gain=0.0)
        blocks = _blocks(len(rows), self.config.micro_batch)
        # Every process draws every block's positions, in order, so each process's share sees the positions one process
        # would draw for it; then it computes its own share of the blocks only.
        positions = [self._positions(rows[block], rng) for block in blocks]
        for index in distributed.my_share(len(blocks)):
            block = blocks[index]
            states, batch = self._at_positions(*self.cache.rows(rows[block]), positions[index])
            ops = torch.as_tensor(operators[block], device=self.device)
            with torch.no_grad():  # the frozen model's outputs; the logit form steers them without recomputing
                base_logits = self.adapter.finish(states, batch, self.config.form, self.layer)
            logits = steered_logits(self.adapter, self.bank, states, batch, ops, self.config.form, self.layer, base_logits)
            # The loss each row needs, and only that one: cross-entropy on members, KL on the others.
            member = torch.as_tensor(is_member[block], device=self.device)
            other = ~member
            members, others = select_rows(batch, member), select_rows(batch, other)
            losses = self.adapter.example_losses(logits[member], members)
            kl = _kl_per_row(base_logits[other], logits[other], self.adapter.prediction_mask(others))
            fidelity, stability = losses.sum() / n_member, kl.sum() / n_other
            (self.config.fidelity_weight * fidelity + self.config.stability_weight * stability).backward()
            with torch.no_grad():
                base_losses = self.adapter.example_losses(base_logits[member], members)
                totals["fidelity_gain"] += float((base_losses - losses).sum() / n_member)
            totals["fidelity"] += fidelity.item()
            totals["stability"] += stability.item()
        return distributed.sum_values(totals, self.device), np.unique(operators)

    def _positions(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """`loss_positions` random positions of these rows' sequences (the same for the whole micro-batch), or None
        for all of them."""
        count = self.config.loss_positions
        if not count or not self.cache.sequence:
            return None
        width = self.cache.width(rows)
        if count >= width - 1:
            return None
        return np.sort(rng.choice(width - 1, size=count, replace=False))  # the last predicts nothing

    def _at_positions(self, states: torch.Tensor, batch: Batch, positions: np.ndarray | None) -> tuple[torch.Tensor, Batch]:
        if positions is None:
            return states, batch
        picked = self.adapter.at_positions(states, batch, torch.as_tensor(positions, device=states.device))
        return picked if picked is not None else (states, batch)

    def linearity(self, rng: np.random.Generator) -> tuple[float, np.ndarray]:
        """Mean squared ridge residual of each probe example's responses to a sample of operators on the sketched
        design (its gradient, scaled by the weight, accumulated), and the operators sampled."""
        config = self.config
        operators = rng.choice(self.membership.num_subsets, size=min(config.linearity_operators, self.membership.num_subsets), replace=False)
        probe = rng.choice(self.n, size=config.linearity_batch, replace=False) if self.n >= config.linearity_batch else np.arange(self.n)
        states, batch = self.cache.rows(probe)
        with torch.no_grad():
            base_logits = self.adapter.finish(states, batch, config.form, self.layer)
            base = self.adapter.example_losses(base_logits, batch)
        pairs_op = np.repeat(operators, len(probe))
        pairs_row = np.tile(np.arange(len(probe)), len(operators))
        blocks = _blocks(len(pairs_op), config.micro_batch)
        mine = distributed.my_share(len(blocks))
        steered = []
        for block in (blocks[index] for index in mine):
            index = torch.as_tensor(pairs_row[block], device=self.device)
            sub_batch = select_rows(batch, index)
            logits = steered_logits(self.adapter, self.bank, states[index], sub_batch, torch.as_tensor(pairs_op[block], device=self.device),
                                    config.form, self.layer, base_logits[index] if config.form == "logit" else None)
            steered.append(self.adapter.example_losses(logits, sub_batch))
        sketch_rows = self.sketch[torch.as_tensor(operators, device=self.device)]
        if distributed.world_size() == 1:
            responses = (base.repeat(len(operators)) - torch.cat(steered)).view(len(operators), len(probe))
            loss = linearity_residual(sketch_rows, responses, config.sketch_ridge).pow(2).mean()
            (config.linearity_weight * loss).backward()
            return loss.item(), operators
        # Several processes: the residual couples every pair, so each process shares its steered losses, computes the
        # loss on all of them, and backpropagates its own pairs' part of the gradient.
        mine_span = slice(blocks[mine[0]].start, blocks[mine[-1]].stop) if len(mine) else slice(0, 0)
        local = torch.cat(steered) if steered else None
        everyone = torch.zeros(len(pairs_op), dtype=base.dtype, device=self.device)
        if local is not None:
            everyone[mine_span] = local.detach()
        everyone = distributed.sum_across(everyone).requires_grad_(True)
        responses = (base.repeat(len(operators)) - everyone).view(len(operators), len(probe))
        loss = linearity_residual(sketch_rows, responses, config.sketch_ridge).pow(2).mean()
        (gradient,) = torch.autograd.grad(config.linearity_weight * loss, everyone)
        if local is not None:
            local.backward(gradient[mine_span])
        return loss.item(), operators


def _blocks(total: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


def _kl_per_row(base_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    base_logp = torch.log_softmax(base_logits.float(), dim=-1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    kl = (base_logp.exp() * (base_logp - logp)).sum(dim=-1)
    if kl.dim() == 1:
        return kl * mask
    return (kl * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def _sketch(membership: Membership, config: StrideConfig) -> torch.Tensor:
    """M R with R a seeded Gaussian n×q: a q-column summary of which subsets share which examples."""
    rng = np.random.default_rng([config.seed, 7])
    projection = rng.standard_normal((membership.num_examples, config.sketch_dim)).astype(np.float32)
    return torch.from_numpy(np.asarray(membership.matrix @ projection, dtype=np.float32))


def linearity_residual(sketch_rows: torch.Tensor, responses: torch.Tensor, gamma: float) -> torch.Tensor:
    """M̃(M̃ᵀM̃ + γI)⁻¹M̃ᵀy − y for every column y of `responses` (operators × probe examples): one ridge fit per
    probe example on the sketched design rows M̃ = (M R)_S, on centred rows and columns (each example's intercept is
    free). A vector of responses is one column."""
    design = sketch_rows - sketch_rows.mean(dim=0, keepdim=True)
    y = responses - responses.mean(dim=0, keepdim=True)
    gram = design.T @ design + gamma * torch.eye(design.shape[1], device=design.device, dtype=design.dtype)
    fitted = design @ torch.linalg.solve(gram, design.T @ y)
    return fitted - y


# ------------------------------------------------------------------------------------------- optimisers


class _PlainAdam:
    """One Adam over the whole bank: an operator not drawn in a step gets a zero gradient, and Adam still moves it
    along its decaying momentum."""

    def __init__(self, bank: SteeringBank, learning_rate: float):
        self.adam = torch.optim.Adam(bank.parameters(), lr=learning_rate)

    def zero_grad(self) -> None:
        self.adam.zero_grad(set_to_none=True)

    def step(self, drawn: np.ndarray) -> None:
        self.adam.step()

    def state_dict(self) -> dict:
        return self.adam.state_dict()  # the format checkpoints had before `optimizer` existed: they still resume

    def load_state_dict(self, state: dict) -> None:
        self.adam.load_state_dict(state)


class _MaskedAdam:
    """Adam on the shared basis; lazy Adam (torch's SparseAdam) on the a_k, fed only the rows of the operators drawn
    in the step, so the others and their moments stay exactly as they were."""

    def __init__(self, bank: SteeringBank, learning_rate: float):
        self.coefficients = bank.coefficients
        self.basis = torch.optim.Adam(bank.basis.parameters(), lr=learning_rate)
        self.rows = torch.optim.SparseAdam([bank.coefficients], lr=learning_rate)

    def zero_grad(self) -> None:
        self.basis.zero_grad(set_to_none=True)
        self.rows.zero_grad(set_to_none=True)

    def step(self, drawn: np.ndarray) -> None:
        grad = self.coefficients.grad
        if grad is not None:
            rows = torch.as_tensor(np.unique(drawn), device=grad.device)  # sorted and unique: already coalesced
            self.coefficients.grad = torch.sparse_coo_tensor(rows[None], grad[rows], grad.shape, is_coalesced=True, check_invariants=False)
            self.rows.step()
        self.basis.step()

    def state_dict(self) -> dict:
        return {"basis": self.basis.state_dict(), "rows": self.rows.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.basis.load_state_dict(state["basis"])
        self.rows.load_state_dict(state["rows"])


_OPTIMIZERS = {"adam": _PlainAdam, "masked-adam": _MaskedAdam}


# ----------------------------------------------------------------------------------------- checkpoints


def _checkpoint(folder: Path, step: int, bank: SteeringBank, optimizer: _PlainAdam | _MaskedAdam, log: TrainingLog) -> None:
    with atomic_path(Path(folder)) as tmp:
        tmp.mkdir(parents=True)
        bank.save(tmp / "bank.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        atomic_write_text(tmp / "progress.json", json.dumps({"step": step, "curves": log.curves}))


def _resume(folder: Path, bank: SteeringBank, optimizer: _PlainAdam | _MaskedAdam, log: TrainingLog) -> int:
    progress = Path(folder) / "progress.json"
    if not progress.is_file():
        return 0
    state = json.loads(progress.read_text())
    bank.load(Path(folder) / "bank.safetensors")
    optimizer.load_state_dict(torch.load(Path(folder) / "optimizer.pt", weights_only=True))
    log.curves = {name: list(values) for name, values in state["curves"].items()}
    return int(state["step"])
