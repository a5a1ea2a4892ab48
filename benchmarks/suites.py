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


SMOKE = Suite("smoke", (
    SettingPlan(
        "digits", "smoke", lds_subsets=32, fraction=0.5, removal_ks=(10, 50), removal_seeds=(0,), removal_queries=5,
        methods=(
            _m("random", "benchmarks.methods.baselines:random_scores", "baseline"),
            *stride_methods("cpu-smoke"),
            _m("grad-dot", f"{GRADIENTS}:grad_dot"),
            _m("trak", f"{GRADIENTS}:trak"),
        ),
    ),
    SettingPlan(
        "pretrain", "smoke", lds_subsets=8, fraction=0.3,
        methods=(
            _m("random", "benchmarks.methods.baselines:random_scores", "baseline"),
            *stride_methods("cpu-smoke"),
            _m("grad-dot", f"{GRADIENTS}:grad_dot"),
            _m("bm25", f"{TEXT}:bm25"),
        ),
    ),
))

SUITES = {"smoke": SMOKE}
