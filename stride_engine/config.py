"""One frozen configuration for a STRIDE run, with presets.

Every knob the method has lives here (METHOD.md), so a run directory's `config.yaml` is enough to repeat a run.
Each stage of a run depends on a subset of these fields; `stage_fields` names them so that a changed value
invalidates exactly the stages it affects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class StrideConfig:
    # --- corpus ---------------------------------------------------------------------------------------
    chunk_length: int = 128  # tokens per training example; longer documents are split into several chunks
    text_field: str = "text"
    id_field: str = "id"
    domain_field: str = "domain"
    # --- measurement design (METHOD step 1) -----------------------------------------------------------
    num_subsets: int = 256  # K
    subsets_per_example: int = 8  # d: each example is a member of d of the K subsets
    seed: int = 0
    # The design's own seed (None: `seed`). Set apart, `seed` varies only what the operators' training draws (their
    # start, the rows of each step, the recovery's folds) on one design (benchmarks/results/seed_spread.md).
    design_seed: int | None = None
    # --- steering operators (METHOD step 2) -----------------------------------------------------------
    form: str = "activation"  # "activation" (edit the residual stream after `layer`) | "logit"
    layer: int | None = None  # decoder layer whose output is steered; None -> `layer_fraction` of depth
    layer_fraction: float = 0.65
    rank: int = 16  # r: width of the shared basis B_theta
    basis: str = "linear"  # "linear" | "mlp" (one hidden layer of `basis_hidden` units)
    basis_hidden: int = 64
    steps: int = 600
    operators_per_step: int = 8  # subsets trained together in one optimiser step
    fidelity_batch: int = 8  # member examples per operator per step
    stability_batch: int = 4  # non-member examples per operator per step
    # Full-batch training: every step trains every operator on all of its members (operators_per_step and
    # fidelity_batch are then unused), with stability_batch non-members each. A step has n·d member rows instead
    # of operators_per_step · fidelity_batch; on small problems it reaches a better fit, at a step count that
    # depends on the data (benchmarks/results/full_batch.md).
    full_batch: bool = False
    learning_rate: float = 3e-3
    # All a_k live in one tensor: plain Adam ("adam") keeps moving the operators not drawn in a step along their old
    # momentum; "masked-adam" updates only the drawn operators' rows (and their moments), like torch's SparseAdam,
    # and the shared basis every step (results/optimizer_and_linearity.md compares them).
    optimizer: str = "adam"
    fidelity_weight: float = 1.0
    stability_weight: float = 0.5
    linearity_weight: float = 0.1
    linearity_every: int = 10  # the linearity term costs many operators' forwards: apply it every few steps
    linearity_operators: int = 32  # operators whose responses enter one linearity term
    linearity_batch: int = 4  # probe examples for one linearity term
    sketch_dim: int = 8  # q: columns of the random sketch M R
    sketch_ridge: float = 1.0  # gamma in the sketch's ridge residual
    # Logit form on a sequence model: score the training losses on this many random positions per sequence instead
    # of all of them (0 = all). The vocabulary-wide outputs dominate a step's cost, so a step costs about
    # loss_positions / chunk_length as much, and the saving buys more rows or steps.
    loss_positions: int = 0
    # Logit form: where each a_k writes. "full": a_k is (outputs × r), the bank K × V × r (8 GB at K = 1000, a 128k
    # vocabulary and r = 16, tripled by Adam). "head": a_k is (d_model × r) and its edit goes through the model's frozen
    # output head, õ = head(h + a_k·B_θ(h)): the bank is K × d × r, and each steered row costs one more head pass.
    logit_bank: str = "full"
    micro_batch: int = 64  # rows per forward pass (TRAPS: ~64 rows is fastest on CPU)
    checkpoint_every: int = 100  # steps between resumable checkpoints of operator training
    # --- responses (METHOD step 3, measurement) -------------------------------------------------------
    # What a response measures on each query: "loss" (its cross-entropy) or "log-odds" (minus the log-odds of the
    # correct output, TRAK's margin): a loss the model has already driven near zero barely moves under steering,
    # its log-odds does (adapters.ModelAdapter.example_measurements).
    measurement: str = "loss"
    # --- recovery (METHOD step 3) ---------------------------------------------------------------------
    solver: str = "lasso"  # "lasso" | "ridge"
    lambda_rule: str = "fixed"  # "fixed" (lambda = lambda_fraction · lambda_max) | "cv" (held-out subsets)
    lambda_fraction: float = 0.2  # lambda / lambda_max for the "fixed" rule (measured on the demo: see README)
    cv_folds: int = 5
    ridge_alpha: float = 1.0
    solver_max_iter: int = 2000
    solver_tol: float = 1e-6
    # Grouped recovery (groups.py): 0 = plain sparse recovery; C > 0 = k-means the training chunks into C groups by
    # the model's own states at the cut, fit one effect per group, and recover the sparse rest. For dense effects
    # (a whole domain helps a target), which K measurements cannot resolve chunk by chunk.
    groups: int = 0
    group_ridge: float = 1.0  # ridge on the group effects, in units of the mean eigenvalue of the group Gram matrix
    # --- fusion with a gradient method (fusion.py) ------------------------------------------------------
    # "none" | "ekfac": each query's chunk scores are STRIDE's fused with EK-FAC's (kronfluence), both standardised
    # per query; fuse_weight is STRIDE's share. Above every single method on the benchmark's language models
    # (benchmarks/results/full.md), at the cost of both methods. The factors are fitted with the operators.
    fuse: str = "none"
    fuse_weight: float = 0.5
    # --- score store --------------------------------------------------------------------------------
    aggregate: str = "max"  # chunk -> document: "max" (largest |score|, signed) | "sum"
    top_k: int = 100  # documents kept per query and direction (most and least influential)
    # --- execution ----------------------------------------------------------------------------------
    device: str = "cpu"
    # Where the states at the cut live while the operators train: "memory" (on the device) or "disk" (a file in the
    # run's operators.partial/, mapped into memory: the OS pages it in and out, so a pool whose states do not fit in
    # RAM still trains; each micro-batch's rows are gathered and moved to the device). Same results either way.
    # "recompute" holds no states: each micro-batch's are computed from its tokens when training reads them, which
    # costs less than caching once a step count x batch rows is below the pool's size (a large pool; results equal
    # the cached ones within float rounding, docs/scaling.md).
    state_cache: str = "memory"
    # How the cached states are stored ("memory" and "disk"): "float32", or "bfloat16" (half the memory or file; each
    # micro-batch is widened back to float32 when training reads it, so only the stored values are
    # rounded, to 8 significant bits). Part of the operators' fingerprint when not float32.
    state_dtype: str = "float32"
    # The frozen model's precision: "float32", or "bfloat16" (half its memory, and the precision large models are
    # trained in; loaded in it, never materialised in float32). The operators, their edits and every loss stay float32:
    # the states at the cut are widened when captured and narrowed to the model's precision where the frozen rest of
    # the model reads them, so the logit form's full bank adds its edit in float32 after the head, while in the
    # activation form and the head bank the edit passes through bfloat16 layers. Part of the operators' fingerprint
    # when not float32.
    model_dtype: str = "float32"

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> "StrideConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {sorted(unknown)}; known keys: {sorted(field_names())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        from .artifacts import atomic_write_text  # local: artifacts imports nothing from here

        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> "StrideConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        return cls().replace(**values)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(StrideConfig)]


PRESETS: dict[str, dict[str, Any]] = {
    # A few minutes on 2 CPU cores for a corpus of a few thousand short documents (the demo, the tests).
    # The logit form: on the demo model (2 layers) it found planted facts far better than the activation form
    # (top-10 hit rate 0.96 against 0.48 at the best activation setting tried; see the README).
    "cpu-smoke": dict(
        form="logit", chunk_length=64, num_subsets=128, subsets_per_example=4, rank=8, steps=300,
        operators_per_step=8, fidelity_batch=8, stability_batch=4, linearity_every=20, linearity_operators=24,
        checkpoint_every=100,
    ),
    # Tuned by the attribution benchmark (README, "How good is it?"): the logit form beat the activation form on
    # both settings (digits LDS 0.36 vs 0.28, pre-training LM 0.10 vs 0.03); many operator updates per step with
    # small member batches and a strong stability term moved digits LDS from 0.07 to 0.36; lambda 0.1 x lambda_max
    # tied cross-validation (0.361 vs 0.367) at a fraction of its cost.
    "default": dict(
        form="logit", num_subsets=512, subsets_per_example=8, rank=8, steps=1000, operators_per_step=64,
        fidelity_batch=4, stability_batch=4, stability_weight=5.0, lambda_fraction=0.1,
    ),
    # For language-model pools of about a thousand chunks or more: the attribution benchmark's K = 1,024 row as it was
    # measured (benchmarks/results/full.md, "More operators"). On the language models K limits the recovery, and the
    # cheaper step (losses at 32 positions) pays for 4x the operators: LDS 0.400 / 0.643 on the two 2-layer settings
    # it was chosen on, 0.376 on the 4-layer one it was not, past LoGra on all three. A pool with fewer than about
    # 6 chunks per subset (n * 8 / 1,024, so n below ~800) cannot fill every subset and is refused.
    "lm": dict(
        form="logit", chunk_length=128, num_subsets=1024, subsets_per_example=8, rank=8, steps=1000,
        operators_per_step=64, fidelity_batch=4, stability_batch=4, stability_weight=5.0, lambda_fraction=0.1,
        loss_positions=32, linearity_every=20, linearity_operators=24,
    ),
    # The released configuration (METHOD.md): K = 1000, d = 10, r = 16, 10k iterations; meant for a GPU.
    "paper": dict(
        chunk_length=512, num_subsets=1000, subsets_per_example=10, rank=16, steps=10_000, operators_per_step=64,
        fidelity_batch=8, stability_batch=8, micro_batch=512, device="cuda",
    ),
}


# For runs meant for selection (`curate fit --preset select`): the default plus grouped recovery, whose group effects
# carry what a whole source does for a target (plain Lasso selections were blind to the domains, see
# benchmarks/results/selection_diagnostics.md), with lambda by cross-validation, as the selection study runs it.
PRESETS["select"] = {**PRESETS["default"], "groups": 16, "lambda_rule": "cv"}

def preset(name: str, **overrides: Any) -> StrideConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return StrideConfig().replace(**{**PRESETS[name], **overrides})


# Which configuration fields each stage depends on (beyond its inputs). A change to any of them makes that
# stage, and every stage downstream of it, stale.
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "chunks": ("chunk_length", "text_field", "id_field", "domain_field"),
    "design": ("num_subsets", "subsets_per_example", "seed", "design_seed"),
    "operators": (
        "form", "layer", "layer_fraction", "rank", "basis", "basis_hidden", "steps", "operators_per_step",
        "fidelity_batch", "stability_batch", "full_batch", "learning_rate", "optimizer", "fidelity_weight", "stability_weight",
        "linearity_weight", "linearity_every", "linearity_operators", "linearity_batch", "sketch_dim",
        "sketch_ridge", "seed", "loss_positions", "logit_bank", "state_dtype", "model_dtype",
    ),
    "responses": ("measurement",),
    "scores": (
        "solver", "lambda_rule", "lambda_fraction", "cv_folds", "ridge_alpha", "solver_max_iter", "solver_tol",
        "groups", "group_ridge", "aggregate", "top_k", "fuse", "fuse_weight",
    ),
}


# Fields added after runs were fitted, with the value that reproduces what those runs did: a field holding that
# value is left out of its stage's fingerprint, so a run fitted before the field existed is still up to date.
ADDED_FIELDS: dict[str, Any] = {"loss_positions": 0, "optimizer": "adam", "measurement": "loss", "full_batch": False,
                                 "logit_bank": "full", "state_dtype": "float32", "model_dtype": "float32",
                                 "fuse": "none", "fuse_weight": 0.5, "design_seed": None}


def stage_fields(config: StrideConfig, stage: str) -> dict[str, Any]:
    values = {name: getattr(config, name) for name in STAGE_FIELDS[stage]}
    return {name: value for name, value in values.items() if ADDED_FIELDS.get(name, object()) != value}


_CHOICES = {
    "form": ("activation", "logit"),
    "optimizer": ("adam", "masked-adam"),
    "basis": ("linear", "mlp"),
    "solver": ("lasso", "ridge"),
    "lambda_rule": ("cv", "fixed"),
    "aggregate": ("max", "sum"),
    "measurement": ("loss", "log-odds"),
    "state_cache": ("memory", "disk", "recompute"),
    "logit_bank": ("full", "head"),
    "state_dtype": ("float32", "bfloat16"),
    "model_dtype": ("float32", "bfloat16"),
    "fuse": ("none", "ekfac"),
}

_POSITIVE = (
    "chunk_length", "num_subsets", "subsets_per_example", "rank", "basis_hidden", "steps", "operators_per_step",
    "fidelity_batch", "stability_batch", "linearity_every", "linearity_operators", "linearity_batch", "sketch_dim",
    "micro_batch", "checkpoint_every", "cv_folds", "solver_max_iter", "top_k",
)


def _validate(config: StrideConfig) -> None:
    for name, choices in _CHOICES.items():
        if getattr(config, name) not in choices:
            raise ConfigError(f"{name}={getattr(config, name)!r} is not one of {list(choices)}")
    for name in _POSITIVE:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if config.chunk_length < 2:
        raise ConfigError(f"chunk_length must be at least 2 tokens (one to predict from, one to predict), got {config.chunk_length}")
    if config.subsets_per_example > config.num_subsets:
        raise ConfigError(
            f"subsets_per_example (d={config.subsets_per_example}) cannot exceed num_subsets (K={config.num_subsets})"
        )
    if config.num_subsets < 2:
        raise ConfigError(f"num_subsets (K) must be at least 2, got {config.num_subsets}")
    if config.cv_folds < 2 and config.lambda_rule == "cv":
        raise ConfigError(f"cv_folds must be at least 2 for lambda_rule='cv', got {config.cv_folds}")
    if config.cv_folds > config.num_subsets:
        raise ConfigError(f"cv_folds ({config.cv_folds}) cannot exceed num_subsets ({config.num_subsets})")
    if config.design_seed is not None and (not isinstance(config.design_seed, int) or isinstance(config.design_seed, bool)
                                           or config.design_seed < 0):
        raise ConfigError(f"design_seed must be a non-negative integer or null (the design then follows seed), got {config.design_seed!r}")
    if config.layer is not None and (not isinstance(config.layer, int) or config.layer < 0):
        raise ConfigError(f"layer must be a non-negative layer index or null, got {config.layer!r}")
    if not 0.0 < config.layer_fraction <= 1.0:
        raise ConfigError(f"layer_fraction must be in (0, 1], got {config.layer_fraction}")
    if not 0.0 < config.lambda_fraction <= 1.0:
        raise ConfigError(f"lambda_fraction must be in (0, 1] (a fraction of lambda_max), got {config.lambda_fraction}")
    for name in ("groups", "loss_positions"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{name} must be 0 (off) or a positive integer, got {value!r}")
    if config.state_dtype != "float32" and config.state_cache == "recompute":
        raise ConfigError(f"state_dtype={config.state_dtype!r} is how cached states are stored, and state_cache='recompute' "
                          "caches none: use state_cache='memory' or 'disk', or leave state_dtype at float32")
    if config.logit_bank != "full" and config.form != "logit":
        raise ConfigError(f"logit_bank={config.logit_bank!r} needs form='logit' (the activation form's edit is at the cut)")
    if config.loss_positions and config.form != "logit":
        raise ConfigError("loss_positions needs form='logit': in the activation form positions interact in the layers after the cut")
    if isinstance(config.fuse_weight, bool) or not isinstance(config.fuse_weight, (int, float)) or not 0.0 <= config.fuse_weight <= 1.0:
        raise ConfigError(f"fuse_weight is STRIDE's share of a fused score and must be in [0, 1], got {config.fuse_weight!r}")
    for name in ("learning_rate", "ridge_alpha", "solver_tol", "sketch_ridge", "group_ridge"):
        if not getattr(config, name) > 0:
            raise ConfigError(f"{name} must be positive, got {getattr(config, name)}")
    for name in ("fidelity_weight", "stability_weight", "linearity_weight"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be non-negative, got {getattr(config, name)}")
    if not isinstance(config.full_batch, bool):
        raise ConfigError(f"full_batch must be true or false, got {config.full_batch!r}")
    _validate_linearity(config)
    if config.fidelity_weight == 0:
        raise ConfigError("fidelity_weight must be positive: without it the operators learn nothing about their subsets")


def _validate_linearity(config: StrideConfig) -> None:
    """The linearity term regresses S = linearity_operators responses on q = sketch_dim sketch columns plus a free
    intercept: with q >= S - 1 the centred columns span every centred response, the ridge residual is (near) zero
    and the term trains nothing."""
    if config.linearity_weight > 0 and config.sketch_dim >= config.linearity_operators - 1:
        raise ConfigError(
            f"sketch_dim ({config.sketch_dim}) must be below linearity_operators - 1 ({config.linearity_operators} - 1): "
            f"{config.linearity_operators} operators' responses are fitted exactly by {config.sketch_dim} sketch columns "
            "and an intercept, so the linearity term would be zero and do nothing. Raise linearity_operators to at least "
            f"{config.sketch_dim + 2}, lower sketch_dim, or set linearity_weight=0"
        )
