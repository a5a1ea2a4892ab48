"""Benchmark settings by name; each takes a `scale` ("smoke" or "full")."""

from __future__ import annotations

import importlib

from .base import ExampleSet, Setting

SETTINGS = {
    "digits": "benchmarks.settings.digits:DigitsSetting",
    "cancer": "benchmarks.settings.cancer:CancerSetting",
    "pretrain": "benchmarks.settings.pretrain:PretrainSetting",
    "finetune": "benchmarks.settings.finetune:FinetuneSetting",
    "deep": "benchmarks.settings.deep:DeepPretrainSetting",
}


def build_setting(name: str, scale: str) -> Setting:
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; known: {sorted(SETTINGS)}")
    module, _, attribute = SETTINGS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)(scale=scale)


__all__ = ["SETTINGS", "ExampleSet", "Setting", "build_setting"]
