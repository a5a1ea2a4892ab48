"""The two suites: `smoke` (minutes, in CI) and `full` (the committed results; an hour or more on 2 cores).

A suite lists, per setting, the ground-truth plan and the methods. Methods are named by "module:function" and
options, so adding a peer or an ablation is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .methods import MethodSpec

CACHE = Path(__file__).parent / "cache"
STRIDE = "benchmarks.methods.stride:stride"
GRADIENTS = "benchmarks.methods.gradients"
TEXT = "benchmarks.methods.text"


@dataclass(frozen=True)
class SettingPlan:
    setting: str
    scale: str
    methods: tuple[MethodSpec, ...]
    lds_subsets: int
    fraction: float
    shared_init: bool = True
    removal_ks: tuple[int, ...] = ()
    removal_seeds: tuple[int, ...] = (0,)
    removal_queries: int = 0
    threads: int = 2
    cache: Path = CACHE


@dataclass(frozen=True)
class Suite:
    name: str
    settings: tuple[SettingPlan, ...]
    commit_ground_truth: bool = False  # full: ground truth lives in results/ (committed); smoke: in the cache
    notes: list[str] = field(default_factory=list)


def _m(label: str, function: str, group: str = "peer", removal: bool = True, **options) -> MethodSpec:
    return MethodSpec(label, function, options, group, removal)


def stride_methods(preset: str, **common) -> tuple[MethodSpec, ...]:
    return (
        _m("stride-logit", STRIDE, "stride", preset_name=preset, form="logit", **common),
        _m("stride-activation", STRIDE, "stride", preset_name=preset, form="activation", **common),
    )


# STRIDE on the digits MLP, tuned on the full setting's ground truth (README, "How good is it?"): many operators,
# each updated often (64 per step, small member batches), held close to the base model outside its subset.
DIGITS_STRIDE = dict(
    preset_name="cpu-smoke", num_subsets=512, subsets_per_example=8, rank=8, steps=1000, operators_per_step=64,
    fidelity_batch=4, stability_weight=5.0, lambda_fraction=0.1,
)

# Operators trained to convergence, chosen on digits (issue 18; results/operator_space.md says why): every operator on
# all its members each step for 1,000 steps, the correct class's log-odds measured, rank 16. In the logit form's
# parameter space the exact influence reaches digits' best only once preconditioned by the curvature the stability
# term supplies, which takes the operators to convergence; cancer's lies in the first-order regime (few steps).
CONVERGED = dict(full_batch=True, steps=1000, measurement="log-odds", rank=16)


def converged_rows(base: dict) -> tuple[MethodSpec, ...]:
    """The converged configuration alone, averaged over two fits, fused with LoGra, and fused with EK-FAC as the
    product runs it (`curate attribute --fuse ekfac`). Added after the ground truth on both classifiers."""
    config = {**base, "form": "logit", **CONVERGED}
    activation = {**config, "form": "activation", "layer": 1}
    return (
        _m("stride-logit converged", STRIDE, "ablation", False, **config),
        _m("stride-logit converged ensemble=2", f"{COMBINED}:ensemble", "ablation", False, fits=2, **config),
        _m("stride-logit converged + logra", f"{COMBINED}:fused", "ablation", False, peer=f"{GRADIENTS}:logra", peer_options={}, **config),
        _m("stride-logit converged fuse=ekfac", STRIDE, "ablation", False, fuse="ekfac", **config),
        # the same training in the activation form after the first hidden layer: its edits pass through the layers
        # above the cut, a wider space than the last layer's (results/operator_space.md bounds the logit form there)
        _m("stride-activation converged layer=1", STRIDE, "ablation", False, **activation),
        _m("stride-activation converged layer=1 fuse=ekfac", STRIDE, "ablation", False, fuse="ekfac", **activation),
        # its seed spread (design, initialisation), before it can become a preset
        *(_m(f"stride-activation converged layer=1 seed={seed}", STRIDE, "ablation", False, **{**activation, "seed": seed})
          for seed in (1, 2)),
        # the three seeds' fits averaged (seeds 0-2): does averaging tame cancer's seed spread?
        _m("stride-activation converged layer=1 ensemble=3", f"{COMBINED}:ensemble", "ablation", False, fits=3, **activation),
        # three other seeds (3-5): does the digits ensemble's win over LoGra hold on another draw of designs and starts?
        _m("stride-activation converged layer=1 ensemble=3 seeds 3-5", f"{COMBINED}:ensemble", "ablation", False, fits=3,
           seed=3, **activation),
        # the same fits, each standardised per query before the mean (results/seed_spread.md: it helps across starts)
        _m("stride-activation converged layer=1 ensemble=3 standardized", f"{COMBINED}:ensemble", "ablation", False, fits=3,
           standardize=True, **activation),
    )


# One knob at a time, from the tuned configuration: K, d, rank, layer/form, each loss term, lambda rule, solver, steps.
ABLATIONS = {
    "K=128": dict(num_subsets=128), "K=256": dict(num_subsets=256), "K=1024": dict(num_subsets=1024),
    "d=4": dict(subsets_per_example=4), "d=16": dict(subsets_per_example=16),
    "rank=4": dict(rank=4), "rank=32": dict(rank=32),
    "steps=300": dict(steps=300), "steps=3000": dict(steps=3000),
    "no stability": dict(stability_weight=0.0), "no linearity": dict(linearity_weight=0.0),
    "linearity x10": dict(linearity_weight=1.0),
    "lambda cv": dict(lambda_rule="cv"), "lambda 0.05": dict(lambda_fraction=0.05), "lambda 0.4": dict(lambda_fraction=0.4),
    "ridge": dict(solver="ridge"),
    "log-odds": dict(measurement="log-odds"),  # responses measure the correct output's log-odds, not the loss
    "groups=16": dict(groups=16, lambda_rule="cv"),  # grouped recovery (stride_engine/groups.py)
}


# Plain Adam against masked (lazy) Adam on the a_k, each over seeds 0-2 (results/optimizer_and_linearity.md). The
# seed moves the design, the initialisation and the batches: its spread is the noise a difference has to beat.
# "seed=0" is the main row's configuration under an ablation label (no removal retrains).
OPTIMIZER_STUDY = {
    f"{name}seed={seed}": dict(seed=seed, **change)
    for name, change in (("", {}), ("masked-adam ", dict(optimizer="masked-adam")))
    for seed in (0, 1, 2)
}


def ablations(base: dict, label: str = "stride-logit", extra: dict | None = None) -> tuple[MethodSpec, ...]:
    variants = {**ABLATIONS, **(extra or {})}
    return tuple(_m(f"{label} {name}", STRIDE, "ablation", False, **{**base, **change}) for name, change in variants.items())


# Sized for the 2,850-document Llama: each optimiser step costs operators_per_step x (member + non-member) rows of
# 128 tokens through the output head and a full-vocabulary KL, ~1.8 s per step at 32 operators x 8 rows on 2 cores,
# so the LM gets fewer steps and operators per step than the digits MLP.
LM_STRIDE = dict(
    preset_name="cpu-smoke", chunk_length=128, num_subsets=256, subsets_per_example=8, rank=8, steps=300,
    operators_per_step=16, fidelity_batch=4, stability_batch=4, stability_weight=5.0, lambda_fraction=0.1,
)

# Options from the peers' own defaults, sized for a 0.5 M-parameter Llama on 2 CPU cores (methods/gradients.py).
LM_PEERS = (
    _m("grad-dot", f"{GRADIENTS}:grad_dot", train_batch_size=64, query_batch_size=160, grad_chunk=16),
    _m("grad-cos", f"{GRADIENTS}:grad_cos", train_batch_size=64, query_batch_size=160, grad_chunk=16),
    _m("trak", f"{GRADIENTS}:trak", proj_dim=512, train_batch_size=128),
    _m("logra", f"{GRADIENTS}:logra", proj_dim=1024),
    _m("ekfac", f"{GRADIENTS}:ekfac"),
    _m("bm25", f"{TEXT}:bm25"),
    _m("embedding", f"{TEXT}:embedding"),
)

# The levers the digits tuning pointed to, tried on the pre-training LM (each costs 10-20 min here): more operator
# updates, and operators free to move further (weaker stability term, higher learning rate).
LM_ABLATIONS = {
    "steps=1000": dict(steps=1000),
    "stability=1 lr=0.01": dict(stability_weight=1.0, learning_rate=0.01),
    # Grouped recovery (stride_engine/groups.py): the same operators decoded with 16 groups of chunks, with the
    # cross-validated λ the selection recipe uses and with the fixed λ of the main row; and that λ rule alone.
    "groups=16": dict(groups=16, lambda_rule="cv"),
    "groups=16 lambda 0.1": dict(groups=16),
    "steps=1000 groups=16": dict(steps=1000, groups=16, lambda_rule="cv"),
    "lambda cv": dict(lambda_rule="cv"),
    # The cheaper step (loss_positions): losses on 32 of the 128 positions, the saving spent on 4x the steps (here) or
    # on 4x the rows per step ("rows x4", below); both cost about what steps=1000 on every position does.
    "steps=4000 positions=32": dict(steps=4000, loss_positions=32),
    **OPTIMIZER_STUDY,
}

# More operators at the same cost, on both LM settings (results/recovery_ceiling.md: at K = 256 even exact responses
# give back only about half of a peer's LDS on pre-training): the cheaper step's 512 rows ("rows x4", K = 256) spread
# over 2x or 4x the operators, so each operator still sees its members about 11 times.
LM_SUBSET_VARIANTS = {
    "steps=1000 positions=32 rows x4": dict(steps=1000, loss_positions=32, fidelity_batch=16, stability_batch=16),
    "K=512 steps=1000 positions=32 ops=32 rows x2": dict(
        num_subsets=512, steps=1000, loss_positions=32, operators_per_step=32, fidelity_batch=8, stability_batch=8),
    "K=1024 steps=1000 positions=32 ops=64": dict(
        num_subsets=1024, steps=1000, loss_positions=32, operators_per_step=64),
}


COMBINED = "benchmarks.methods.combined"
LM_K1024 = {**LM_STRIDE, "form": "logit", **LM_SUBSET_VARIANTS["K=1024 steps=1000 positions=32 ops=64"]}


def fused_k1024() -> tuple[MethodSpec, ...]:
    """The K = 1,024 fit (the `lm` preset) fused with LoGra and with EK-FAC, half and half, on the LM settings (issue:
    a combined score above every single method). Each row runs its own fit and its peer: nothing is cached. The last
    row is the same fusion as the product runs it (`fuse="ekfac"`: the engine's own EK-FAC on its chunks)."""
    return (
        *(_m(f"stride-logit K=1024 + {name}", f"{COMBINED}:fused", "ablation", False, peer=f"{GRADIENTS}:{name}",
             peer_options=options, **LM_K1024)
          for name, options in (("logra", dict(proj_dim=1024)), ("ekfac", {}))),
        _m("stride-logit K=1024 fuse=ekfac", STRIDE, "ablation", False, fuse="ekfac", **LM_K1024),
    )


def combined(base: dict, logra_options: dict | None = None, label: str = "stride-logit", fused_ensemble: bool = True) -> tuple[MethodSpec, ...]:
    """Ensembles of 2 and 4 fits (seeds 0.., each its own design) and STRIDE fused with LoGra (one fit, and four
    unless `fused_ensemble` is off: on the LMs four fits cost ~15 min), the peer from dattri as in the LoGra row
    (methods/combined.py). The fused rows run their fits and LoGra again: nothing is cached between rows."""
    peer = dict(peer=f"{GRADIENTS}:logra", peer_options=logra_options or {})
    return (
        _m(f"{label} ensemble=2", f"{COMBINED}:ensemble", "ablation", False, fits=2, **base),
        _m(f"{label} ensemble=4", f"{COMBINED}:ensemble", "ablation", False, fits=4, **base),
        _m(f"{label} + logra", f"{COMBINED}:fused", "ablation", False, **peer, **base),
        *((_m(f"{label} ensemble=4 + logra", f"{COMBINED}:fused", "ablation", False, fits=4, **peer, **base),) if fused_ensemble else ()),
    )


def _lm_plan(setting: str, ablate: bool = False) -> SettingPlan:
    """Both language-model settings: 64 retrains on 30% subsets (the paper's protocol), STRIDE in both forms, every peer."""
    variants = tuple(
        _m(f"stride-logit {name}", STRIDE, "ablation", False, **{**LM_STRIDE, "form": "logit", **change})
        for name, change in {**(LM_ABLATIONS if ablate else {}), **LM_SUBSET_VARIANTS}.items()
    )
    return SettingPlan(
        setting, "full", lds_subsets=64, fraction=0.3,
        methods=(
            _m("random", "benchmarks.methods.baselines:random_scores", "baseline"),
            _m("stride-logit", STRIDE, "stride", form="logit", **LM_STRIDE),
            _m("stride-activation", STRIDE, "stride", form="activation", layer=1, **LM_STRIDE),
            # responses measured by the completion tokens' log-odds instead of their loss (issue: queries without scores)
            _m("stride-logit log-odds", STRIDE, "ablation", False, form="logit", measurement="log-odds", **LM_STRIDE),
            # each a_k d_model x r, its edit through the frozen output head: the bank for a real vocabulary (issue: scale-out)
            _m("stride-logit head-bank", STRIDE, "ablation", False, form="logit", logit_bank="head", **LM_STRIDE),
            _m("stride-logit head-bank lr=0.01", STRIDE, "ablation", False, form="logit", logit_bank="head",
               **{**LM_STRIDE, "learning_rate": 0.01}),
            # the cached states stored in bfloat16, widened to float32 when read: half the state cache (issue: scale-out)
            _m("stride-logit bf16 states", STRIDE, "ablation", False, form="logit", state_dtype="bfloat16", **LM_STRIDE),
            *LM_PEERS,
            *combined({**LM_STRIDE, "form": "logit"}, dict(proj_dim=1024), fused_ensemble=False),
            *variants,
            *fused_k1024(),
            # the factorised bank (each a_k d_model x r, its edit through the frozen head) at the lm preset's K = 1,024:
            # the bank a real vocabulary needs (issue: scale-out), measured at the configuration users are told to run
            _m("stride-logit K=1024 head-bank", STRIDE, "ablation", False, logit_bank="head", **LM_K1024),
        ),
    )


FULL = Suite("full", (
    SettingPlan(
        "digits", "full", lds_subsets=256, fraction=0.5, removal_ks=(10, 25, 50, 100), removal_seeds=(0, 1, 2),
        removal_queries=30,
        methods=(
            _m("random", "benchmarks.methods.baselines:random_scores", "baseline"),
            _m("stride-logit", STRIDE, "stride", form="logit", **DIGITS_STRIDE),
            _m("stride-activation", STRIDE, "stride", form="activation", layer=3, **DIGITS_STRIDE),
            _m("grad-dot", f"{GRADIENTS}:grad_dot"),
            _m("grad-cos", f"{GRADIENTS}:grad_cos"),
            _m("trak", f"{GRADIENTS}:trak"),
            _m("logra", f"{GRADIENTS}:logra"),
            _m("ekfac", f"{GRADIENTS}:ekfac"),
            *ablations({**DIGITS_STRIDE, "form": "logit"}, extra={"activation layer=1": dict(form="activation", layer=1), **OPTIMIZER_STUDY}),
            *combined({**DIGITS_STRIDE, "form": "logit"}),
            # the product's fused score (`curate attribute --fuse ekfac`), added after the ground truth, not tuned
            _m("stride-logit fuse=ekfac", STRIDE, "ablation", False, form="logit", fuse="ekfac", **DIGITS_STRIDE),
            *converged_rows(DIGITS_STRIDE),
        ),
    ),
    _lm_plan("pretrain", ablate=True),
    _lm_plan("finetune"),
    # A deeper LM no STRIDE configuration was chosen on (settings/deep.py: 4 layers, another sample of the corpus).
    # The rows were fixed before its ground truth existed: the main LM row, the K = 1,024 row picked on the two
    # 2-layer settings, the activation form cut after the last layer (as on the 2-layer models) and at half depth,
    # and the peers that came closest elsewhere.
    SettingPlan(
        "deep", "full", lds_subsets=64, fraction=0.3,
        methods=(
            _m("random", "benchmarks.methods.baselines:random_scores", "baseline"),
            _m("stride-logit", STRIDE, "stride", form="logit", **LM_STRIDE),
            _m("stride-activation", STRIDE, "stride", form="activation", layer=3, **LM_STRIDE),
            _m("stride-activation layer=1", STRIDE, "ablation", False, form="activation", layer=1, **LM_STRIDE),
            *(_m(f"stride-logit {name}", STRIDE, "ablation", False, **{**LM_STRIDE, "form": "logit", **change})
              for name, change in LM_SUBSET_VARIANTS.items()),
            _m("grad-dot", f"{GRADIENTS}:grad_dot", train_batch_size=64, query_batch_size=120, grad_chunk=16),
            _m("trak", f"{GRADIENTS}:trak", proj_dim=512, train_batch_size=128),
            _m("logra", f"{GRADIENTS}:logra", proj_dim=1024),
            _m("ekfac", f"{GRADIENTS}:ekfac"),
            _m("bm25", f"{TEXT}:bm25"),
            *fused_k1024(),
        ),
    ),
    # A classifier no STRIDE configuration was tuned on (settings/cancer.py): the digits configuration carried over,
    # the `default` preset as a new user would run it, each with the loss and with the log-odds measured.
    SettingPlan(
        "cancer", "full", lds_subsets=256, fraction=0.5,
        methods=(
            _m("random", "benchmarks.methods.baselines:random_scores", "baseline"),
            _m("stride-logit", STRIDE, "stride", form="logit", **DIGITS_STRIDE),
            _m("stride-activation", STRIDE, "stride", form="activation", layer=3, **DIGITS_STRIDE),
            _m("stride-logit log-odds", STRIDE, "ablation", False, form="logit", measurement="log-odds", **DIGITS_STRIDE),
            _m("stride default", STRIDE, "ablation", False, preset_name="default"),
            _m("stride default log-odds", STRIDE, "ablation", False, preset_name="default", measurement="log-odds"),
            _m("grad-dot", f"{GRADIENTS}:grad_dot"),
            _m("grad-cos", f"{GRADIENTS}:grad_cos"),
            _m("trak", f"{GRADIENTS}:trak"),
            _m("logra", f"{GRADIENTS}:logra"),
            _m("ekfac", f"{GRADIENTS}:ekfac"),
            *combined({**DIGITS_STRIDE, "form": "logit"}),
            # the product's fused score (`curate attribute --fuse ekfac`), added after the ground truth, not tuned
            _m("stride-logit fuse=ekfac", STRIDE, "ablation", False, form="logit", fuse="ekfac", **DIGITS_STRIDE),
            # chosen on digits, checked here
            *converged_rows(DIGITS_STRIDE),
        ),
    ),
), commit_ground_truth=True)

SMOKE = Suite("smoke", (
    SettingPlan(
        "digits", "smoke", lds_subsets=32, fraction=0.5, removal_ks=(10, 50), removal_seeds=(0,), removal_queries=5,
        methods=(
            _m("random", "benchmarks.methods.baselines:random_scores", "baseline"),
            _m("stride-logit", STRIDE, "stride", form="logit", **dict(DIGITS_STRIDE, num_subsets=256, steps=300)),
            _m("stride-activation", STRIDE, "stride", form="activation", layer=3, **dict(DIGITS_STRIDE, num_subsets=256, steps=300)),
            _m("grad-dot", f"{GRADIENTS}:grad_dot"),
            _m("trak", f"{GRADIENTS}:trak"),
        ),
    ),
    SettingPlan(
        "pretrain", "smoke", lds_subsets=8, fraction=0.3,
        methods=(
            _m("random", "benchmarks.methods.baselines:random_scores", "baseline"),
            _m("stride-logit", STRIDE, "stride", form="logit", preset_name="cpu-smoke", chunk_length=128, num_subsets=64, steps=100),
            _m("grad-dot", f"{GRADIENTS}:grad_dot"),
            _m("bm25", f"{TEXT}:bm25"),
        ),
    ),
))

SUITES = {"smoke": SMOKE, "full": FULL}
