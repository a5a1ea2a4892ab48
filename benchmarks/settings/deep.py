"""Setting 5, a deeper language model the engine was not tuned on: a 4-layer Llama (d = 128) pre-trained from
scratch on another draw from the shared four-domain corpus, with other domain sizes.

It is the pre-training setting's recipe (settings/pretrain.py: fixed optimiser steps, the same initialisation for
every retrain, one thread per model) with twice the layers, a wider model and a different sample: the documents are
drawn with seed 1 (the pre-training setting uses seed 0; 1,253 of the 2,700 training documents are in both, most of them tales, which the corpus has few of) and the domains are
sized differently (more Shakespeare, less Wikipedia). Every STRIDE configuration run on it was chosen on the other
settings before its ground truth existed, so it checks whether those choices carry over; it is also where the
activation form is cut below a deeper layer than on the 2-layer models.
"""

from __future__ import annotations

from typing import Any

from .pretrain import PretrainSetting

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {
        "train_per_domain": {"wiki": 40, "shakespeare": 60, "tales": 40, "math": 50},
        "queries_per_domain": 5,
        "max_length": 128,
        "vocab_size": 1024,
        "model": {"hidden_size": 64, "num_layers": 4, "num_heads": 4},
        "train": {"steps": 40, "batch_size": 16, "lr": 3e-3, "warmup": 4, "final_lr": 0.0, "fixed_init": True},
        "seed": 1,
    },
    "full": {
        "train_per_domain": {"wiki": 600, "shakespeare": 1000, "tales": 450, "math": 650},
        "queries_per_domain": 30,
        "max_length": 128,
        "vocab_size": 2048,
        "model": {"hidden_size": 128, "num_layers": 4, "num_heads": 4},
        "train": {"steps": 320, "batch_size": 8, "lr": 3e-3, "warmup": 20, "final_lr": 0.0, "fixed_init": True},
        "seed": 1,
    },
}


class DeepPretrainSetting(PretrainSetting):
    """The pre-training setting with a 4-layer model and another sample of the corpus (see the module text)."""

    name = "deep"
    SCALES = SCALES
