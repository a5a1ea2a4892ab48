"""Steering operators: a shared basis B_θ and one small matrix a_k per subset (METHOD step 2).

edit_k(z) = a_k · B_θ(z), with B_θ: R^{in} -> R^r shared by all operators and a_k ∈ R^{out×r}.
- activation form: ẑ = z + edit_k(z) at the cut, then the frozen rest of the model (out = in = d_model);
- logit form: õ = o + edit_k(h) on the output features h (out = number of outputs); with the `head` readout
  õ = head(h + edit_k(h)) (out = in: the edit lives in the head's input space, a bank of K × d × r, not K × V × r).
The a_k start at zero, so every operator starts as the base model and the stability term starts at zero.
Rows of one batch may use different operators: one forward pass serves many operators at once.
"""

from __future__ import annotations

import json

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .adapters import Batch, ModelAdapter


class SteeringBank(nn.Module):
    def __init__(self, num_operators: int, in_dim: int, out_dim: int, rank: int, basis: str = "linear", hidden: int = 64,
                 readout: str = "full"):
        super().__init__()
        self.readout = readout  # logit form: "full" (edits the outputs) or "head" (edits the head's input)
        if basis == "linear":
            self.basis = nn.Linear(in_dim, rank)
        else:
            self.basis = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, rank))
        self.coefficients = nn.Parameter(torch.zeros(num_operators, out_dim, rank))
        self.shape = dict(num_operators=num_operators, in_dim=in_dim, out_dim=out_dim, rank=rank, basis=basis, hidden=hidden)
        if readout != "full":  # bank.json of a full bank stays as it was
            self.shape["readout"] = readout

    def edit(self, states: torch.Tensor, operator_ids: torch.Tensor) -> torch.Tensor:
        """a_k · B_θ(z) for each row's operator; `states` is (rows, ..., in_dim), `operator_ids` (rows,)."""
        codes = self.basis(states)
        return torch.einsum("b...r,bdr->b...d", codes, self.coefficients[operator_ids])

    def save(self, path: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path))

    def load(self, path: Path) -> "SteeringBank":
        self.load_state_dict(load_file(str(path)))
        return self

    @classmethod
    def from_folder(cls, folder: Path) -> "SteeringBank":
        """A bank saved as folder/bank.json (its shape) and folder/bank.safetensors (its weights)."""
        shape = json.loads((Path(folder) / "bank.json").read_text())
        bank = cls(shape["num_operators"], shape["in_dim"], shape["out_dim"], shape["rank"], shape["basis"], shape["hidden"],
                   shape.get("readout", "full"))
        return bank.load(Path(folder) / "bank.safetensors")


def steered_logits(
    adapter: ModelAdapter, bank: SteeringBank, states: torch.Tensor, batch: Batch, operator_ids: torch.Tensor,
    form: str, layer: int, base_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """The steered model's outputs. In the logit form the base outputs do not depend on the operator: pass them as
    `base_logits` when they are already computed, so the output head runs once per row, not once more."""
    if form == "activation" or bank.readout == "head":
        return adapter.finish(states + bank.edit(states, operator_ids), batch, form, layer)
    logits = base_logits if base_logits is not None else adapter.finish(states, batch, form, layer)
    return logits + bank.edit(states, operator_ids)
