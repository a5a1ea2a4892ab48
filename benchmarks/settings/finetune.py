"""Setting 3, "fine-tuning": the pre-training setting's full model fine-tuned on GSM8K-style question/answer pairs.

Base: ``PretrainSetting(scale)``'s full model (trained and cached by that setting). Training set: math documents of
the shared corpus (GSM8K train, ``Question: ...\\nAnswer: ...\\n#### n``) that the base was neither trained nor
queried on, restricted to those that fit whole in the base's window (``max_length`` tokens with ``<|bos|>`` and
``<|eos|>``), so no training example is cut. Queries: GSM8K *test* items written the same way (``Question: {question}
\\nAnswer: {answer}``), also restricted to those that fit whole; a query's loss is the mean next-token
cross-entropy over its answer tokens only (the question is the prompt), built with ``stride_engine.corpus
.encode_queries``. Training examples count every token after ``<|bos|>``.

``retrain(masks, seeds)`` fine-tunes the same base on each subset with the full model's recipe: the same number
of optimiser steps (see ``benchmarks.settings.pretrain`` for why steps rather than epochs), each seed setting the
data order; every run starts from the same base weights, so there is no initialisation noise. ``retrain`` on the
full mask with the setting's seed reproduces the fine-tuned model exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stride_engine.corpus import Queries, encode_queries, token_batch

from .base import ExampleSet
from .pretrain import (
    DEFAULT_DATA,
    CausalLMSetting,
    PretrainSetting,
    _available_cores,
    _sha,
    run_jobs,
    train_causal_lm,
)

__all__ = ["FINETUNE_SCALES", "FinetuneSetting"]

FINETUNE_SCALES: dict[str, dict[str, Any]] = {
    "smoke": {
        "base_scale": "smoke",
        "n_train": 60,
        "n_queries": 10,
        "train": {"steps": 20, "batch_size": 8, "lr": 1e-3, "warmup": 2, "final_lr": 0.0},
        "seed": 0,
    },
    "full": {
        "base_scale": "full",
        "n_train": 800,
        "n_queries": 100,
        "train": {"steps": 100, "batch_size": 16, "lr": 1e-3, "warmup": 10, "final_lr": 0.0},
        "seed": 0,
    },
}


class FinetuneSetting(CausalLMSetting):
    """The pretrain setting's model, fine-tuned on math question/answer pairs; queries are GSM8K test items."""

    name = "finetune"

    def __init__(
        self,
        scale: str = "full",
        cache: Path = Path(__file__).resolve().parents[1] / "cache",
        data: Path = DEFAULT_DATA,
        *,
        workers: int | None = None,
        config: dict[str, Any] | None = None,
    ):
        if scale not in FINETUNE_SCALES:
            raise ValueError(f"scale must be one of {sorted(FINETUNE_SCALES)}, got {scale!r}")
        self.scale = scale
        self.config = json.loads(json.dumps(config if config is not None else FINETUNE_SCALES[scale]))
        self.cache, self.data = Path(cache), Path(data)
        self.workers = workers
        self.seed = int(self.config["seed"])
        self.base = PretrainSetting(self.config["base_scale"], cache=cache, data=data, workers=workers)
        benchmark = self.data / "benchmarks" / "gsm8k_test.jsonl"
        if not benchmark.is_file():
            raise FileNotFoundError(
                f"the finetune setting needs the shared GSM8K test items at {benchmark} (the project's shared data, "
                "../shared/data, which a plain clone does not have)"
            )
        self._tokenizer = self.base.tokenizer()
        self.max_length = int(self.base.config["max_length"])
        train_docs = self._select_train()
        self.train = self._encode_train(train_docs)
        self.queries = self._select_queries(benchmark)
        self._core = {
            "setting": self.name,
            "scale": scale,
            "config": self.config,
            "base": self.base.describe(),
            "data_files": ["corpus/math.jsonl", "benchmarks/gsm8k_test.jsonl"],
            "train_ids_sha256": _sha(self.train.ids),
            "query_ids_sha256": _sha(self.queries.ids),
            "train_text_sha256": _sha([d["text"] for d in train_docs]),
            "query_text_sha256": _sha(self.queries.texts),
        }
        self.folder = self.cache / f"{self.name}-{scale}-{_sha(self._core)[:12]}"
        self._model = None

    # ------------------------------------------------------------------------------------------ data

    def _fits(self, texts: list[str]) -> np.ndarray:
        lengths = [len(ids) for ids in self._tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return np.asarray(lengths) + 2 <= self.max_length  # + bos + eos

    def _select_train(self) -> list[dict]:
        used = set(self.base.train.ids) | set(self.base.queries.ids)
        docs = []
        with open(self.data / "corpus" / "math.jsonl", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    if record["id"] not in used:
                        docs.append({"id": record["id"], "text": record["text"].strip(), "domain": "math"})
        docs = [d for d, fits in zip(docs, self._fits([d["text"] for d in docs])) if fits]
        n = int(self.config["n_train"])
        if n > len(docs):
            raise ValueError(f"{n} fine-tuning documents asked, only {len(docs)} unused math documents fit the window")
        order = np.random.default_rng(self.seed).permutation(len(docs))
        return [docs[i] for i in order[:n]]

    def _encode_train(self, docs: list[dict]) -> ExampleSet:
        tok = self._tokenizer
        encoded = tok([d["text"] for d in docs], add_special_tokens=False)["input_ids"]
        input_ids = np.full((len(docs), self.max_length), tok.pad_token_id, dtype=np.int64)
        lengths = np.zeros(len(docs), dtype=np.int64)
        for row, tokens in enumerate(encoded):
            seq = [tok.bos_token_id] + list(tokens) + [tok.eos_token_id]
            input_ids[row, : len(seq)] = seq
            lengths[row] = len(seq)
        return ExampleSet(
            tensors=token_batch(input_ids, lengths, None),
            ids=[d["id"] for d in docs],
            texts=[d["text"] for d in docs],
            domains=["math"] * len(docs),
        )

    def _select_queries(self, path: Path) -> ExampleSet:
        with open(path, encoding="utf-8") as handle:
            items = [json.loads(line) for line in handle if line.strip()]
        prompts = [f"Question: {item['question'].strip()}\nAnswer:" for item in items]
        completions = [" " + item["answer"].strip() for item in items]
        fits = self._fits([p + c for p, c in zip(prompts, completions)])
        candidates = np.flatnonzero(fits)
        n = int(self.config["n_queries"])
        if n > len(candidates):
            raise ValueError(f"{n} queries asked, only {len(candidates)} GSM8K test items fit the window")
        chosen = np.sort(np.random.default_rng(self.seed + 1).choice(candidates, size=n, replace=False))
        queries = Queries(
            ids=[items[i]["id"] for i in chosen],
            prompts=[prompts[i] for i in chosen],
            completions=[completions[i] for i in chosen],
        )
        tensors = encode_queries(queries, self._tokenizer, self.max_length)
        return ExampleSet(
            tensors=tensors,
            ids=queries.ids,
            texts=[p + c for p, c in zip(queries.prompts, queries.completions)],
            domains=["math"] * n,
        )

    # ------------------------------------------------------------------------------------------ model

    def _base_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.base.model().state_dict().items()}

    def model(self):
        """The base fine-tuned on the full training set (eval mode); trained once, then loaded from the cache."""
        return self._cached_model(lambda: train_causal_lm(
            self.train.tensors["input_ids"].numpy(), self.train.tensors["attention_mask"].sum(dim=1).numpy(),
            self.base._model_config(), self.config["train"], self.seed, init_state=self._base_state(),
        ))

    # ------------------------------------------------------------------------------------------ ground truth

    def retrain(self, masks: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        masks = self._checked_masks(masks, seeds)
        input_ids = self.train.tensors["input_ids"].numpy()
        lengths = self.train.tensors["attention_mask"].sum(dim=1).numpy()
        state = self._base_state()
        jobs = [
            {
                "input_ids": input_ids[mask],
                "lengths": lengths[mask],
                "model_config": self.base._model_config(),
                "train": self.config["train"],
                "seed": int(seed),
                "init_state": state,
                "queries": self.queries.tensors,
            }
            for mask, seed in zip(masks, seeds)
        ]
        workers = self.workers or (_available_cores() if self.scale != "smoke" else 1)
        return run_jobs(jobs, workers).astype(np.float64)

    def describe(self) -> dict[str, Any]:
        return {
            **self._core,
            "n_train": len(self.train),
            "n_queries": len(self.queries),
            "recipe": "fine-tune the base for a fixed number of optimiser steps; one thread per model",
        }
