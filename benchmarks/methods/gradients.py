"""Gradient-based peer attribution methods, each computed by its own published package.

Every method is `fn(setting, **options) -> scores`, float64 (n_queries, n_train), with the benchmark's sign
convention: higher = training on the example lowers the query's loss more (helps it). Every method differentiates
`setting.example_losses` (per-example loss; mean token cross-entropy for language models), on batches built with
`setting.train.rows` / `setting.queries.rows`, so all methods and STRIDE read the same loss.

| name     | package / class                                    | what it computes                                     |
| -------- | -------------------------------------------------- | ---------------------------------------------------- |
| grad_dot | dattri `TracInAttributor` (1 checkpoint, weight 1) | <g_query, g_train>, exact (identity "projection")    |
| grad_cos | dattri `TracInAttributor`, `normalized_grad=True`  | cosine of the two gradients, exact                   |
| trak     | dattri `TRAKAttributor` (1 checkpoint)             | TRAK: projected margin gradients, (ΦᵀΦ + λI)⁻¹, 1-p  |
| logra    | dattri `LoGraAttributor`                           | LoGra: Kronecker-factored projection of the Linear   |
|          |                                                    | layers' gradients, per-layer damped empirical Fisher |
| ekfac    | kronfluence `Analyzer`, strategy "ekfac"           | EK-FAC influence function on the Linear layers       |

Sign conventions (all verified on the tests' planted duplicates, whose own score is positive and the largest):
dattri's TracIn/TRAK/LoGra scores and kronfluence's pairwise scores are all g_query · M · g_train with both
gradients of the loss (TRAK: of the margin, i.e. both of "goodness") and M positive definite, so positive = the
training example lowers the query's loss. No method's output is negated.

Package choices and deviations (torch 2.13 CPU, dattri 0.3.0, kronfluence 1.0.1):
- TracIn with the final checkpoint only is lr · grad_dot: the same ranking and the same LDS (a Spearman correlation,
  invariant to a positive scale). It is not registered separately: report `grad_dot` as "TracIn (1 checkpoint)".
  dattri's `TracInAttributor` always projects; the identity projection keeps it exact. Its attribute() recomputes
  the inner loader's gradients for every batch of the outer one, so the queries form the outer loader.
- dattri vmaps per-example gradients (`torch.func`); its loss callbacks receive one example without the batch
  dimension, and `_single_example` adds it back. dattri differentiates w.r.t. one flat parameter vector that the
  loss slices; each slice's backward zero-fills a (batch × P) buffer, which made a 2M-parameter Llama 6× slower
  and 11 GB large. `_task` overrides only the per-example gradient function (same (batch × P) matrix, verified
  bit-identical on the tests' settings, computed tensor by tensor in chunks of `grad_chunk` examples).
- Hugging Face's SDPA mask builder branches on tensor values, which vmap forbids: causal LMs switch to the "eager"
  attention implementation while dattri runs (same numbers) and switch back afterwards.
- TRAK: dattri's `TRAKAttributor` rather than `traker`, because it runs on CPU as is (traker 0.3.2's CPU
  `BasicProjector` fails at scoring unless `block_size < proj_dim`, see TRAPS.md). TRAK's output function is the
  margin f = log(p / (1 - p)) with p = exp(-loss): exactly the TRAK paper's multi-class margin for a classifier;
  for a language model p = exp(-mean token CE), a sequence-level margin read off `example_losses` alone. One model,
  no ensemble (the settings train one). dattri's regularisation is absolute (default 0, singular when
  proj_dim ≥ n_train); here it is relative to the mean diagonal of ΦᵀΦ (default 0.1, like the damping of the
  other two second-order peers). On a digits MLP proxy (1,300 train, 100 queries, 64 half-subsets) LDS was 0.17
  with λ = 0, 0.34 with the default, 0.38 with 1.0.
- LoGra: dattri's `LoGraAttributor` (random normal factorised projections, per-layer empirical Fisher in the
  projected space). `logix` (logix-ai 0.1.1, the LoGra authors' package) imports on Python 3.11 but was not tried:
  dattri's LoGra plugs into the same task as the other peers, runs on CPU, and with `damping=0.1` and
  `proj_dim=4096` it matches logix's defaults (random init, rank 64 per side, damping 0.1 × mean eigenvalue).
  dattri's own damping default (1e-5 × mean eigenvalue) is far weaker: LDS 0.16 instead of 0.41 on the digits
  proxy, so the default here is logix's 0.1. dattri's hooks read `nn.Linear` layers only (embeddings and norms are
  not scored) and expect the batch-mean loss, which `_LoGraModule` returns. Its `torch.compile`-decorated
  compressor runs with dynamo disabled (compiling per layer shape on a CPU costs more than the computation).
- EK-FAC: kronfluence's Task sums `example_losses` for the training loss and for the query measurement. The
  Fisher is the empirical one by default (`fisher="empirical"`: true labels, `example_losses` as is; LDS 0.44 on
  the digits proxy); `fisher="true"` (kronfluence's own default) samples labels from the model in one forward pass
  (classifier: from `model(x)`'s logits; causal LM: next tokens from the logits, scored with the same mean-token
  cross-entropy; LDS 0.42). Damping: kronfluence's heuristic 0.1 × mean eigenvalue (`damping=None`; its fixed
  default 1e-8 gave 0.34). kronfluence wraps modules in place, so it runs on a deep copy of the model.
- Parameters: `grad_dot`, `grad_cos` and `trak` differentiate all parameters (`params="all"`);
  `params="no_embeddings"` drops `nn.Embedding` weights, or pass parameter-name prefixes. `logra` and `ekfac` see
  the `nn.Linear` layers (their packages' scope; for a Llama that includes `lm_head` but not `embed_tokens`);
  `layers` narrows them to module names of `setting.model()`.
- Cost on 2 shared CPU cores for a 2M-parameter Llama (128 tokens): ≈ 65 ms per example gradient; grad_dot and
  grad_cos ≈ (n_train + n_queries) gradients; trak adds the projection, which dattri regenerates block by block for
  every batch (use `train_batch_size` ≥ 128); ekfac makes three passes over the training set (covariances, Lambda,
  scores) plus one over the queries.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..settings.base import Batch, ExampleSet, Setting

# defaults per setting kind (CPU-sized; see the module docstring)
TRAK_PROJ_DIM = {"classifier": 512, "causal-lm": 512}
LOGRA_PROJ_DIM = {"classifier": 1024, "causal-lm": 1024}


# ----------------------------------------------------------------------------------------------------------------
# shared plumbing


class _Rows(Dataset):
    """ExampleSet rows as dicts (kronfluence and LoGra collate them into Batch dicts)."""

    def __init__(self, examples: ExampleSet):
        self.tensors = examples.tensors
        self.size = len(examples)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Batch:
        return {key: value[index] for key, value in self.tensors.items()}


class _LossModule(nn.Module):
    """`setting.example_losses` as a module, so torch.func can swap the wrapped model's parameters."""

    def __init__(self, setting: Setting, model: nn.Module):
        super().__init__()
        self.model = model
        self._setting = setting  # not a module: kept out of the parameter tree

    def forward(self, batch: Batch) -> torch.Tensor:
        return self._setting.example_losses(self.model, batch)


class _LoGraModule(_LossModule):
    """dattri's hook-based attributors call `model(**batch).loss` and expect the batch-mean loss."""

    def forward(self, **batch: torch.Tensor) -> Any:  # type: ignore[override]
        return types.SimpleNamespace(loss=self._setting.example_losses(self.model, batch).mean())


def _keys(setting: Setting) -> list[str]:
    return list(setting.train.tensors)


def _tuple_loader(examples: ExampleSet, keys: Sequence[str], batch_size: int) -> DataLoader:
    """dattri's vmapped attributors take tuple batches (they read the batch size off the first tensor)."""
    return DataLoader(TensorDataset(*[examples.tensors[key] for key in keys]), batch_size=batch_size, shuffle=False)


def _dict_loader(examples: ExampleSet, batch_size: int) -> DataLoader:
    return DataLoader(_Rows(examples), batch_size=batch_size, shuffle=False)


def _selected_parameters(model: nn.Module, params: str | Sequence[str]) -> set[str]:
    names = [name for name, _ in model.named_parameters()]
    if params == "all":
        return set(names)
    if params == "no_embeddings":
        embedding_weights = {
            f"{module_name}.{pname}" if module_name else pname
            for module_name, module in model.named_modules()
            if isinstance(module, nn.Embedding)
            for pname, _ in module.named_parameters(recurse=False)
        }
        chosen = set(names) - embedding_weights
    elif isinstance(params, str):
        raise ValueError(f"params must be 'all', 'no_embeddings' or a list of name prefixes, not {params!r}")
    else:
        chosen = {name for name in names if any(name == p or name.startswith(p.rstrip(".") + ".") for p in params)}
    if not chosen:
        raise ValueError(f"params={params!r} selects no parameter of the model")
    return chosen


@contextlib.contextmanager
def _trainable(model: nn.Module, selected: set[str] | None) -> Iterator[None]:
    """Only `selected` parameters require grad inside the block (all when None); the flags and the `.grad`s (LoGra's
    backward passes fill those of non-Linear parameters) are restored after."""
    saved = {name: (p.requires_grad, p.grad) for name, p in model.named_parameters()}
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(selected is None or name in selected)
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name][0])
            p.grad = saved[name][1]


@contextlib.contextmanager
def _vmap_safe(model: nn.Module) -> Iterator[None]:
    """Hugging Face's SDPA mask builder branches on tensor values (not allowed under vmap); eager attention doesn't."""
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(implementation)


@contextlib.contextmanager
def _on_device(model: nn.Module, device: str) -> Iterator[None]:
    """Run on `device`; the setting's cached model goes back where it was afterwards."""
    original = next(model.parameters()).device
    model.to(device)
    try:
        yield
    finally:
        model.to(original)


@contextlib.contextmanager
def _no_dynamo() -> Iterator[None]:
    import torch._dynamo

    saved = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    try:
        yield
    finally:
        torch._dynamo.config.disable = saved


def _single_example(
    wrapper: _LossModule, keys: Sequence[str], transform: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> Callable:
    """A dattri callback `f(params, data)`: dattri vmaps over examples, so `data` is one example without its batch
    dimension (a tuple in `keys` order) and `params` the wrapper's trainable parameters by name."""

    def loss(params: dict[str, torch.Tensor], data: Sequence[torch.Tensor]) -> torch.Tensor:
        batch = {key: value.unsqueeze(0) for key, value in zip(keys, data)}
        value = torch.func.functional_call(wrapper, params, (batch,))[0]
        return transform(value) if transform is not None else value

    return loss


def _task(
    wrapper: nn.Module, loss: Callable, target: Callable | None = None, fast: bool = True, chunk: int = 16
):
    """A dattri AttributionTask with one checkpoint: the model as it is (loading it is a no-op, no state-dict copy).

    `fast`: dattri differentiates per example w.r.t. one flat parameter vector that the loss slices into tensors;
    every slice's backward then zero-fills a full (batch × P) buffer, so the cost grows with (number of parameter
    tensors) × P: 6× slower than plain per-example gradients and 11 GB of RAM for a 2M-parameter Llama at batch 64.
    The override differentiates w.r.t. the tensors themselves and concatenates them in dattri's order: the same
    (batch × P) matrix, computed as dattri's vmapped `grad` otherwise would, `chunk` examples per vmap call (the
    vmapped forward holds a whole chunk's activations: large chunks page on a CPU)."""
    from dattri.func.utils import _unflatten_params
    from dattri.task import AttributionTask

    class _Task(AttributionTask):
        def _per_example(self, fn: Callable) -> Callable:
            per_example = torch.func.vmap(torch.func.grad(fn), in_dims=(None, 0), randomness="different")

            def gradients(flat: torch.Tensor, data: Sequence[torch.Tensor]) -> torch.Tensor:
                params = _unflatten_params(flat.detach(), self.model)
                size = len(data[0])
                out = torch.empty(size, flat.numel(), dtype=flat.dtype, device=flat.device)
                for start in range(0, size, chunk):
                    grads = per_example(params, tuple(d[start : start + chunk] for d in data))
                    with torch.no_grad():
                        torch.cat([g.flatten(1) for g in grads.values()], dim=1, out=out[start : start + chunk])
                return out

            return gradients

        def get_grad_loss_func(self, in_dims=(None, 1), layer_name=None, ckpt_idx=None):
            if fast and layer_name is None and tuple(in_dims) == (None, 0):
                return self._per_example(self.original_loss_func)
            return super().get_grad_loss_func(in_dims=in_dims, layer_name=layer_name, ckpt_idx=ckpt_idx)

        def get_grad_target_func(self, in_dims=(None, 1), layer_name=None, ckpt_idx=None):
            if fast and layer_name is None and tuple(in_dims) == (None, 0):
                return self._per_example(self.original_target_func)
            return super().get_grad_target_func(in_dims=in_dims, layer_name=layer_name, ckpt_idx=ckpt_idx)

    return _Task(
        loss_func=loss, model=wrapper, checkpoints=["final"], target_func=target,
        checkpoints_load_func=lambda model, checkpoint: model,
    )


def _to_scores(train_by_query: torch.Tensor, setting: Setting) -> np.ndarray:
    scores = train_by_query.detach().to("cpu", torch.float64).numpy().T.copy()
    expected = (len(setting.queries), len(setting.train))
    if scores.shape != expected:
        raise RuntimeError(f"attributor returned {scores.shape}, expected {expected}")
    return scores


# ----------------------------------------------------------------------------------------------------------------
# gradient similarity (dattri TracIn)


def _gradient_similarity(
    setting: Setting, normalize: bool, params: str | Sequence[str], train_batch_size: int, query_batch_size: int,
    grad_chunk: int, device: str,
) -> np.ndarray:
    from dattri.algorithm.tracin import TracInAttributor

    model = setting.model()
    keys = _keys(setting)
    wrapper = _LossModule(setting, model)
    selected = {f"model.{name}" for name in _selected_parameters(model, params)}
    with _on_device(model, device), _trainable(wrapper, selected), _vmap_safe(model):
        loss = _single_example(wrapper, keys)
        attributor = TracInAttributor(
            task=_task(wrapper, loss, chunk=grad_chunk),
            weight_list=torch.ones(1),
            normalized_grad=normalize,
            # dattri always projects; identity keeps the exact gradients. A full dict: dattri updates a module global.
            projector_kwargs={"proj_dim": 1, "proj_max_batch_size": 32, "proj_seed": 0, "device": device,
                              "proj_type": "identity"},
            device=device,
        )
        # dattri's TracIn recomputes its inner loader's gradients for every batch of its outer loader, and the score
        # is symmetric (same loss both sides): the few queries go outside, so each gradient is computed once.
        query_by_train = attributor.attribute(
            _tuple_loader(setting.queries, keys, query_batch_size),
            _tuple_loader(setting.train, keys, train_batch_size),
        )
    return _to_scores(query_by_train.T, setting)


def grad_dot(
    setting: Setting, *, params: str | Sequence[str] = "all", train_batch_size: int = 64,
    query_batch_size: int = 256, grad_chunk: int = 16, device: str = "cpu",
) -> np.ndarray:
    """Gradient dot product <∇loss_query, ∇loss_train> (dattri `TracInAttributor`, one checkpoint, weight 1, no
    projection). Equals TracIn with the final checkpoint up to the learning rate. Memory: query_batch_size × P
    floats for the query gradients (held while every training batch streams by) plus train_batch_size × P."""
    return _gradient_similarity(setting, False, params, train_batch_size, query_batch_size, grad_chunk, device)


def grad_cos(
    setting: Setting, *, params: str | Sequence[str] = "all", train_batch_size: int = 64,
    query_batch_size: int = 256, grad_chunk: int = 16, device: str = "cpu",
) -> np.ndarray:
    """Gradient cosine similarity (dattri `TracInAttributor` with `normalized_grad=True`, no projection)."""
    return _gradient_similarity(setting, True, params, train_batch_size, query_batch_size, grad_chunk, device)


# ----------------------------------------------------------------------------------------------------------------
# TRAK (dattri TRAKAttributor)


def _margin(loss: torch.Tensor) -> torch.Tensor:
    """TRAK's output function log(p / (1 - p)) with p = exp(-loss)."""
    loss = loss.clamp_min(1e-6)
    return -loss - torch.log(-torch.expm1(-loss))


def _mean_kernel_diagonal(
    margin: Callable, wrapper: nn.Module, setting: Setting, keys: Sequence[str], proj_dim: int, sample: int, seed: int,
    batch_size: int,
) -> float:
    """Expected mean diagonal of TRAK's Φᵀ Φ: n · E|g|² / (P · proj_dim), with dattri's gradients scaled by 1/√P and
    its normal projection (entries N(0, 1)/√proj_dim, so E|Φ g|² = |g|²). E|g|² from a random sample of examples."""
    n = len(setting.train)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False))
    params = {name: p.detach() for name, p in wrapper.named_parameters() if p.requires_grad}
    count = sum(p.numel() for p in params.values())
    per_example = torch.func.vmap(torch.func.grad(margin), in_dims=(None, 0))
    squares = []
    for start in range(0, len(rows), batch_size):
        data = tuple(setting.train.tensors[key][rows[start : start + batch_size]].to(next(iter(params.values())).device) for key in keys)
        grads = per_example(params, data)
        squares.append(sum(g.detach().pow(2).flatten(1).sum(1) for g in grads.values()))
    return float(n * torch.cat(squares).mean() / (count * proj_dim))


def trak(
    setting: Setting, *, proj_dim: int | None = None, regularization: float = 0.1, params: str | Sequence[str] = "all",
    train_batch_size: int = 64, query_batch_size: int = 256, proj_seed: int = 0, device: str = "cpu",
    regularization_sample: int = 256, grad_chunk: int = 16,
) -> np.ndarray:
    """TRAK with one checkpoint (dattri `TRAKAttributor`): random normal projection of the gradients of the margin
    log(p/(1-p)), p = exp(-example loss), to `proj_dim` (default 512; more costs CPU time linearly, see the module docstring), scores
    φ_query (Φᵀ Φ + λI)⁻¹ φ_trainᵀ · (1 - p_train). No ensembling over retrained models (the paper's TRAK averages
    several; the benchmark's settings provide one model). `regularization` is relative: λ = regularization × the
    mean diagonal of Φᵀ Φ (estimated from the gradient norms of `regularization_sample` random training examples;
    dattri itself takes an absolute λ, default 0). With regularization=0, proj_dim must be < n_train (Φᵀ Φ is
    singular otherwise). CPU cost: dattri regenerates the projection matrix in blocks of 100 columns for every
    batch, so a larger `train_batch_size` amortises it."""
    from dattri.algorithm.trak import TRAKAttributor

    proj_dim = proj_dim or TRAK_PROJ_DIM[setting.kind]
    if proj_dim >= len(setting.train) and regularization <= 0:
        raise ValueError(
            f"trak: proj_dim={proj_dim} >= n_train={len(setting.train)} makes Φᵀ Φ singular; "
            "lower proj_dim or pass regularization > 0"
        )
    model = setting.model()
    keys = _keys(setting)
    wrapper = _LossModule(setting, model)
    selected = {f"model.{name}" for name in _selected_parameters(model, params)}
    with _on_device(model, device), _trainable(wrapper, selected), _vmap_safe(model):
        margin = _single_example(wrapper, keys, _margin)
        probability = _single_example(wrapper, keys, lambda loss: torch.exp(-loss))
        absolute = 0.0
        if regularization > 0:
            absolute = regularization * _mean_kernel_diagonal(
                margin, wrapper, setting, keys, proj_dim, regularization_sample, proj_seed, grad_chunk
            )
        attributor = TRAKAttributor(
            task=_task(wrapper, margin, margin, chunk=grad_chunk),
            correct_probability_func=probability,
            projector_kwargs={"proj_dim": proj_dim, "proj_max_batch_size": 32, "proj_seed": proj_seed,
                              "device": device, "proj_type": "normal"},
            device=device,
            regularization=absolute,
        )
        attributor.cache(_tuple_loader(setting.train, keys, train_batch_size))
        scores = attributor.attribute(_tuple_loader(setting.queries, keys, query_batch_size))
    return _to_scores(scores, setting)


# ----------------------------------------------------------------------------------------------------------------
# LoGra (dattri LoGraAttributor)


def logra(
    setting: Setting, *, proj_dim: int | None = None, damping: float | None = 0.1, hessian: str = "eFIM",
    layers: Sequence[str] | None = None, train_batch_size: int = 64, query_batch_size: int = 64,
    device: str = "cpu",
) -> np.ndarray:
    """LoGra (dattri `LoGraAttributor`): each `nn.Linear` layer's per-example gradient is projected as
    (P_out ⊗ P_in) with random normal factors of size √proj_dim each (proj_dim must be a perfect square; default
    1024, i.e. 32 per side; 4096 = logix's rank 64 and dattri's default), preconditioned by the layer's damped
    empirical Fisher in the projected space (`damping` relative to the mean eigenvalue: default 0.1 as in logix;
    None = dattri's 1e-5), and scored against the projected query gradients. `hessian="Identity"` skips the
    preconditioner. `layers`: module names inside `setting.model()` (default: every
    `nn.Linear`)."""
    from dattri.algorithm.logra import LoGraAttributor

    proj_dim = proj_dim or LOGRA_PROJ_DIM[setting.kind]
    model = setting.model()
    wrapper = _LoGraModule(setting, model)
    layer_names = None if layers is None else [f"model.{name}" for name in layers]

    def loss(module: nn.Module, batch: Batch, device_: str) -> torch.Tensor:
        return module(**{key: value.to(device_) for key, value in batch.items()}).loss

    with _on_device(model, device), _trainable(wrapper, None), _no_dynamo(), tempfile.TemporaryDirectory() as cache:
        attributor = LoGraAttributor(
            task=_task(wrapper, loss, fast=False), layer_names=layer_names, hessian=hessian, damping=damping, device=device,
            proj_dim=proj_dim, offload="cpu", cache_dir=cache,
        )
        attributor.cache(_dict_loader(setting.train, train_batch_size))
        scores = attributor.attribute(
            _dict_loader(setting.train, train_batch_size), _dict_loader(setting.queries, query_batch_size)
        )
    return _to_scores(scores, setting)


# ----------------------------------------------------------------------------------------------------------------
# EK-FAC influence functions (kronfluence)


def _sampled_losses(setting: Setting, model: nn.Module, batch: Batch) -> torch.Tensor:
    """Per-example losses with labels drawn from the model's own predictions (for the true Fisher). One forward pass
    only (kronfluence's hooks record every forward), so the loss is the cross-entropy `example_losses` would compute:
    of the logits for a classifier, the mean over `target_mask` of next-token cross-entropy for a causal LM."""
    if setting.kind == "classifier":
        logits = model(batch["x"])
        with torch.no_grad():
            labels = torch.distributions.Categorical(logits=logits.float()).sample()
        return F.cross_entropy(logits, labels, reduction="none")
    from stride_engine.adapters import token_losses_mean

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    with torch.no_grad():
        sampled = torch.distributions.Categorical(logits=logits.float()).sample()  # token t+1 drawn at position t
    targets = torch.cat([batch["input_ids"][:, :1], sampled[:, :-1]], dim=1)
    return token_losses_mean(logits, targets, batch["target_mask"])


def ekfac(
    setting: Setting, *, damping: float | None = None, fisher: str = "empirical", layers: Sequence[str] | None = None,
    train_batch_size: int = 64, query_batch_size: int = 256, seed: int = 0, device: str = "cpu",
) -> np.ndarray:
    """EK-FAC influence (kronfluence `Analyzer`, `FactorArguments(strategy="ekfac")`, pairwise scores) on every
    `nn.Linear` layer (or the module names in `layers`). The Task sums `setting.example_losses` for both the
    training loss and the query measurement. `damping`: kronfluence's damping factor; None = kronfluence's
    heuristic 0.1 × mean eigenvalue. `fisher`: "empirical" (true labels) or "true" (labels sampled from the model).
    Works on a deep copy of the model (kronfluence installs its tracking wrappers in place)."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    if fisher not in ("empirical", "true"):
        raise ValueError(f"fisher must be 'empirical' or 'true', not {fisher!r}")
    is_lm = setting.kind == "causal-lm"

    class _Task(Task):
        def compute_train_loss(self, batch: Batch, model: nn.Module, sample: bool = False) -> torch.Tensor:
            if sample:
                return _sampled_losses(setting, model, batch).sum()
            return setting.example_losses(model, batch).sum()

        def compute_measurement(self, batch: Batch, model: nn.Module) -> torch.Tensor:
            return setting.example_losses(model, batch).sum()

        def get_influence_tracked_modules(self) -> list[str] | None:
            return None if layers is None else list(layers)

        def get_attention_mask(self, batch: Batch) -> torch.Tensor | None:
            return batch["attention_mask"] if is_lm else None

    task = _Task()
    model = prepare_model(copy.deepcopy(setting.model()).to(device).eval(), task)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        analyzer = Analyzer(
            analysis_name="peers", model=model, task=task, cpu=device == "cpu", disable_tqdm=True, output_dir=folder,
            disable_model_save=True,
        )
        analyzer.fit_all_factors(
            factors_name="ekfac", dataset=_Rows(setting.train), per_device_batch_size=train_batch_size,
            factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=fisher == "empirical"),
            overwrite_output_dir=True,
        )
        analyzer.compute_pairwise_scores(
            scores_name="pairwise", factors_name="ekfac", query_dataset=_Rows(setting.queries),
            train_dataset=_Rows(setting.train), per_device_query_batch_size=query_batch_size,
            per_device_train_batch_size=train_batch_size, score_args=ScoreArguments(damping_factor=damping),
            overwrite_output_dir=True,
        )
        scores = analyzer.load_pairwise_scores("pairwise")["all_modules"]  # (n_queries, n_train)
    return _to_scores(scores.T, setting)


REGISTRY: dict[str, Callable[..., np.ndarray]] = {
    "grad_dot": grad_dot,  # = TracIn with the final checkpoint (up to lr): not registered twice
    "grad_cos": grad_cos,
    "trak": trak,
    "logra": logra,
    "ekfac": ekfac,
}
