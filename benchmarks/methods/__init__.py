"""Attribution methods by name. Each is `fn(setting, **options) -> scores`, a float array (n_queries, n_train),
higher = training on the example lowers the query's loss more (helps it).

A method is named in a suite by `MethodSpec(label, function, options)`; `function` is "module:attribute" so that
a child process can import it by name (each method runs in its own process, for a clean peak-memory reading).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MethodSpec:
    label: str  # the row's `method` in the results, e.g. "stride-logit", "trak", "stride-logit K=64"
    function: str  # "benchmarks.methods.gradients:trak"
    options: dict[str, Any] = field(default_factory=dict)
    group: str = "peer"  # "stride" | "peer" | "baseline" | "ablation"
    removal: bool = True  # also run the (costly) top-k removal test for this method

    def resolve(self) -> Callable[..., Any]:
        module, _, attribute = self.function.partition(":")
        return getattr(importlib.import_module(module), attribute)
