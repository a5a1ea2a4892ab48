"""Model adapters: where to cut a model, and how to finish a forward pass from the cut.

STRIDE reads a frozen model at one cut and edits what flows through it:
- form "activation": the residual stream after decoder layer `layer`; the edit propagates through the rest of
  the frozen model.
- form "logit": the features feeding the output head; the edit is added to the logits.

`capture` computes the states at the cut (the frozen prefix, computed once per example and cached by the
engine); `finish` runs the rest of the model from given states. A user with an unusual model writes one small
subclass of `ModelAdapter`; ready adapters cover Hugging Face causal LMs (GPT-2, Llama, Qwen2, OLMo, ...) and
plain torch classifiers (`nn.Sequential`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, ModelError

Batch = dict[str, torch.Tensor]

# Dotted paths to the decoder-block list in the model families we know.
DECODER_LAYER_PATHS = (
    "model.layers",  # Llama, Qwen2, Mistral, OLMo, OLMo-2, Gemma, Phi-3
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
)


class ModelAdapter(ABC):
    """How the engine talks to one model. Batches are dicts of row-aligned tensors."""

    num_layers: int

    @abstractmethod
    def capture(self, batch: Batch, form: str, layer: int) -> torch.Tensor:
        """States at the cut, without gradients."""

    @abstractmethod
    def finish(self, states: torch.Tensor, batch: Batch, form: str, layer: int) -> torch.Tensor:
        """Logits from states at the cut (differentiable in `states`)."""

    @abstractmethod
    def example_losses(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Loss per row of the batch (the quantity whose change is a response)."""

    @abstractmethod
    def prediction_mask(self, batch: Batch) -> torch.Tensor:
        """Which predictions count in the stability KL, shaped like `logits[..., 0]`."""

    def scored_outputs(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """What `example_losses` scores: (outputs (rows, positions, classes), correct class (rows, positions), weight
        (rows, positions)), or None for an adapter that does not say (it can measure only `loss`)."""
        return None

    def example_measurements(self, logits: torch.Tensor, batch: Batch, measurement: str = "loss") -> torch.Tensor:
        """What a response measures per row, in float64 (lower is better, like a loss; MEASUREMENTS):
        - "loss": the mean cross-entropy of the scored outputs;
        - "log-odds": minus the mean log-odds of the correct output, log p − log(1 − p) (TRAK's margin). It does not
          saturate: on an output the model already gets right with p ≈ 1 the loss barely moves, the log-odds does.
        Both come from r = logsumexp of the other outputs − the correct one (loss = softplus(r), minus log-odds = r),
        which keeps their precision where p is near 1 (a float32 cross-entropy there is rounding noise, ~1e-7).
        Raises UndefinedMeasurement naming the rows where it is undefined (a class outside the outputs, no position)."""
        if measurement not in MEASUREMENTS:
            raise ConfigError(f"measurement={measurement!r} is not one of {list(MEASUREMENTS)}")
        scored = self.scored_outputs(logits, batch)
        if scored is None:
            if measurement != "loss":
                raise ModelError(f"{type(self).__name__} does not expose its scored outputs (scored_outputs), so it can "
                                 f"measure only measurement='loss', not {measurement!r}")
            return self.example_losses(logits, batch).double()
        outputs, targets, weights = scored
        _check_scored(outputs, targets, weights)
        rest = _others_over_correct(outputs.float(), targets).double()
        per_position = F.softplus(rest) if measurement == "loss" else rest
        weights = weights.double()
        return (per_position * weights).sum(dim=1) / weights.sum(dim=1)

    def full_logits(self, batch: Batch, model: nn.Module | None = None) -> torch.Tensor:
        """The whole model's logits on a batch, with gradients, for a gradient method fused with STRIDE (fusion.py);
        `model`: a copy of the adapter's model to run instead (the peer wraps its layers)."""
        raise ModelError(f"{type(self).__name__} does not implement full_logits(), which fuse='ekfac' needs: leave fuse "
                         "at 'none', or override ModelAdapter.full_logits")

    def at_positions(self, states: torch.Tensor, batch: Batch, positions: torch.Tensor) -> tuple[torch.Tensor, Batch] | None:
        """States and batch restricted to some sequence positions, for losses in the logit form; None for a model
        without positions. `example_losses` of the result is the mean loss over those positions."""
        return None

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise ConfigError(
                f"layer {layer} is out of range: this model has {self.num_layers} layers (valid: 0..{self.num_layers - 1})"
            )

    def default_layer(self, fraction: float) -> int:
        return min(self.num_layers - 1, max(0, round(fraction * self.num_layers) - 1))

    def to(self, device: str) -> "ModelAdapter":
        return self

    def cast(self, dtype: torch.dtype) -> "ModelAdapter":
        """The frozen model in `dtype` (StrideConfig.model_dtype). `capture` then still returns float32 states and
        `finish` narrows what it is given to `dtype`, so operators and losses stay float32. An adapter that does not
        override this runs its model as it is, and refuses any other precision."""
        if dtype != torch.float32:
            raise ConfigError(f"{type(self).__name__} does not implement cast(), so it runs its model as given: "
                              "leave model_dtype at float32, or override ModelAdapter.cast")
        return self


MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


MEASUREMENTS = ("loss", "log-odds")


class UndefinedMeasurement(ModelError):
    """The measurement is undefined for some rows of a batch (`rows`: their indices in it)."""

    def __init__(self, rows: list[int], reason: str):
        super().__init__(f"rows {rows}: {reason}")
        self.rows, self.reason = rows, reason


def _check_scored(outputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> None:
    counted = weights > 0
    outside = counted & ((targets < 0) | (targets >= outputs.shape[-1]))
    if bool(outside.any()):
        rows = sorted(set(outside.nonzero()[:, 0].tolist()))
        raise UndefinedMeasurement(rows, f"a correct class outside the model's {outputs.shape[-1]} outputs")
    empty = ~counted.any(dim=1)
    if bool(empty.any()):
        raise UndefinedMeasurement(empty.nonzero()[:, 0].tolist(), "no scored position (an empty completion?)")


def _others_over_correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per (row, position): logsumexp of the other outputs minus the correct output's (minus its log-odds)."""
    index = targets.clamp(0, outputs.shape[-1] - 1).unsqueeze(-1)
    correct = outputs.gather(-1, index).squeeze(-1)
    others = outputs.scatter(-1, index, float("-inf")).logsumexp(dim=-1)
    return others - correct


def select_rows(batch: Batch, rows: torch.Tensor | slice) -> Batch:
    return {key: value[rows] for key, value in batch.items()}


def move(batch: Batch, device: torch.device | str) -> Batch:
    return {key: value.to(device) for key, value in batch.items()}


# ------------------------------------------------------------------------------------- causal language models


class _StopForward(Exception):
    """Raised by a hook once the states at the cut are captured: the rest of the forward is not needed."""


class _PassThrough(nn.Module):
    """Stands in for a decoder block below the cut: returns its input unchanged, in the block's output format."""

    def __init__(self, returns_tuple: bool):
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.returns_tuple else hidden_states


class _Inject(_PassThrough):
    """Stands in for the block at the cut: outputs the given (edited) states."""

    def __init__(self, states: torch.Tensor, returns_tuple: bool):
        super().__init__(returns_tuple)
        self.states = states

    def forward(self, hidden_states, *args, **kwargs):
        return (self.states,) if self.returns_tuple else self.states


class CausalLMAdapter(ModelAdapter):
    """Any Hugging Face causal LM whose decoder blocks sit in one `nn.ModuleList`.

    Batches hold `input_ids`, `attention_mask` and `target_mask` (which next-token predictions count).
    """

    def __init__(self, model: nn.Module, layers_path: str | None = None):
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.layers_path, self.layers = _find_layers(model, layers_path)
        self.num_layers = len(self.layers)
        self._returns_tuple: bool | None = None
        self.dtype = next(self.model.parameters()).dtype

    def to(self, device: str) -> "CausalLMAdapter":
        self.model.to(device)
        return self

    def cast(self, dtype: torch.dtype) -> "CausalLMAdapter":
        self.model.to(dtype)
        self.dtype = dtype
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _forward(self, batch: Batch) -> torch.Tensor:
        return self.full_logits(batch)

    def full_logits(self, batch: Batch, model: nn.Module | None = None) -> torch.Tensor:
        return (model or self.model)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits

    @torch.no_grad()
    def capture(self, batch: Batch, form: str, layer: int) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        if form == "activation":
            self.check_layer(layer)

            def hook(module, inputs, output):
                self._returns_tuple = isinstance(output, tuple)
                captured.append(output[0] if isinstance(output, tuple) else output)
                raise _StopForward

            handle = self.layers[layer].register_forward_hook(hook)
        else:

            def hook(module, inputs):
                captured.append(inputs[0])
                raise _StopForward

            handle = self.model.get_output_embeddings().register_forward_pre_hook(hook)
        try:
            self._forward(batch)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0].detach().float()  # the operators read float32 states whatever the model's precision

    def finish(self, states: torch.Tensor, batch: Batch, form: str, layer: int) -> torch.Tensor:
        states = states.to(self.dtype)
        if form == "logit":
            return self.model.get_output_embeddings()(states)
        if self._returns_tuple is None:
            self.capture(select_rows(batch, slice(0, 1)), form, layer)  # learn the blocks' output format
        with self._cut_at(layer, states):
            return self._forward(batch)

    @contextmanager
    def _cut_at(self, layer: int, states: torch.Tensor) -> Iterator[None]:
        """Temporarily replace blocks 0..layer so the forward starts from `states` after block `layer`."""
        originals = [self.layers[i] for i in range(layer + 1)]
        try:
            for i in range(layer):
                self.layers[i] = _PassThrough(self._returns_tuple)
            self.layers[layer] = _Inject(states, self._returns_tuple)
            yield
        finally:
            for i, block in enumerate(originals):
                self.layers[i] = block

    def example_losses(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        if "next_ids" in batch:  # positions taken apart from their sequence (at_positions): targets travel along
            return _masked_mean_cross_entropy(logits.float(), batch["next_ids"], batch["target_mask"])
        return token_losses_mean(logits, batch["input_ids"], batch["target_mask"])

    def scored_outputs(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if "next_ids" in batch:
            return logits, batch["next_ids"], batch["target_mask"]
        return logits[:, :-1], batch["input_ids"][:, 1:], batch["target_mask"][:, :-1]

    def at_positions(self, states: torch.Tensor, batch: Batch, positions: torch.Tensor) -> tuple[torch.Tensor, Batch]:
        # In the logit form a position's output depends on its own state only, so these positions can be scored
        # apart from the rest of their sequence; each carries the token it predicts.
        return states[:, positions], {
            "next_ids": batch["input_ids"][:, positions + 1],
            "target_mask": batch["target_mask"][:, positions],
            "attention_mask": batch["attention_mask"][:, positions],
        }

    def prediction_mask(self, batch: Batch) -> torch.Tensor:
        return batch["attention_mask"].to(torch.float32)


def token_losses_mean(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy per row over the positions `target_mask` marks."""
    return _masked_mean_cross_entropy(logits[:, :-1].float(), input_ids[:, 1:], target_mask[:, :-1])


def _masked_mean_cross_entropy(predictions: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per row: the weighted mean cross-entropy of `predictions` (rows, positions, vocabulary) against `targets`."""
    losses = F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1), reduction="none")
    losses = losses.view(targets.shape) * weights
    return losses.sum(dim=1) / weights.sum(dim=1).clamp_min(1e-8)


def _find_layers(model: nn.Module, layers_path: str | None) -> tuple[str, nn.ModuleList]:
    paths = (layers_path,) if layers_path else DECODER_LAYER_PATHS
    for path in paths:
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return path, module
    if layers_path:
        raise ModelError(f"{type(model).__name__} has no nn.ModuleList of decoder blocks at {layers_path!r}")
    raise ModelError(
        f"cannot find the decoder layers of {type(model).__name__}: looked for {', '.join(DECODER_LAYER_PATHS)}. "
        "Name the nn.ModuleList of decoder blocks with layers_path='dotted.path' (CLI: --layers-path), "
        "or write a ModelAdapter subclass."
    )


def load_causal_lm(model_dir: Path | str, device: str = "cpu", layers_path: str | None = None, dtype: str = "float32"):
    """Load a local Hugging Face causal LM folder (safetensors) and its tokenizer; returns (adapter, tokenizer).
    `dtype` (MODEL_DTYPES): the precision the weights are loaded in."""
    if dtype not in MODEL_DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {list(MODEL_DTYPES)}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model folder {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir} is not a Hugging Face model folder: it has no config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=MODEL_DTYPES[dtype])
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"could not load the model in {model_dir}: {err}") from err
    return CausalLMAdapter(model, layers_path).to(device), tokenizer


# ------------------------------------------------------------------------------------------- classifiers


class SequentialClassifierAdapter(ModelAdapter):
    """A plain torch classifier written as `nn.Sequential`; batches hold `x` and integer labels `y`.

    Layer i is the output of `model[i]`; the logit form cuts before the last module (the output head).
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Sequential):
            raise ModelError(
                f"SequentialClassifierAdapter needs an nn.Sequential, got {type(model).__name__}; "
                "wrap the classifier's blocks in nn.Sequential or write a ModelAdapter subclass"
            )
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.num_layers = len(model)
        self.dtype = next(self.model.parameters()).dtype

    def to(self, device: str) -> "SequentialClassifierAdapter":
        self.model.to(device)
        return self

    def cast(self, dtype: torch.dtype) -> "SequentialClassifierAdapter":
        self.model.to(dtype)
        self.dtype = dtype
        return self

    @torch.no_grad()
    def capture(self, batch: Batch, form: str, layer: int) -> torch.Tensor:
        x = batch["x"].to(self.dtype)
        if form == "logit":
            return self.model[:-1](x).float()
        self.check_layer(layer)
        return self.model[: layer + 1](x).float()

    def finish(self, states: torch.Tensor, batch: Batch, form: str, layer: int) -> torch.Tensor:
        states = states.to(self.dtype)
        return self.model[-1:](states) if form == "logit" else self.model[layer + 1 :](states)

    def full_logits(self, batch: Batch, model: nn.Module | None = None) -> torch.Tensor:
        return (model or self.model)(batch["x"].to(self.dtype))

    def example_losses(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["y"], reduction="none")

    def scored_outputs(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return logits[:, None], batch["y"][:, None], torch.ones(len(batch["y"]), 1, device=logits.device)

    def prediction_mask(self, batch: Batch) -> torch.Tensor:
        return torch.ones(len(batch["y"]), device=batch["y"].device)
