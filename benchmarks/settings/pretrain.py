"""Setting 2, "pre-training": a small Llama trained from scratch on real text from four domains.

The data is the shared four-domain corpus (``../shared/data/corpus/{wiki,shakespeare,tales,math}.jsonl``: Wikipedia
sections, tinyshakespeare speeches, Grimm's tales, GSM8K train problems). Per domain, documents are shuffled with
the setting's seed; the first ones become the training set and the next ones the held-out queries, so queries come
from the same domains (and, for Wikipedia, often from other sections of an article that is in the training set) but
are never training documents.

One training example == one document == one row: every document is encoded as ``<|bos|> text`` and cut to
``max_length`` tokens (``<|eos|>`` ends the few that are shorter). A query is a held-out document in the same
format, and its loss is the mean next-token cross-entropy over its real tokens after ``<|bos|>``. ``texts`` holds
what the model sees (the decoded truncated tokens), for text-only peers such as BM25.

The tokenizer (byte-level BPE, ``curate.demo.model.train_tokenizer``) is trained once on the training documents
and shared by every retrained model: retraining varies the model's data, not its vocabulary.

Training recipe (the same for the full model and every retrain; only the documents differ): AdamW (betas
0.9/0.95, weight decay 0.01 on matrices), gradient clipping at 1, linear warm-up then cosine decay to ``final_lr``
times the peak (0: the last batches then barely move the weights, which cuts the data-order noise), batches drawn
from a fresh shuffle of the (sub)set each epoch, one CPU thread per model.

*A fixed number of optimiser steps, not fixed epochs.* Every model, full or subset, takes ``steps`` updates of
``batch_size`` documents. The full model sees each document about once (320 x 8 updates over 2,850 documents, like
single-epoch pre-training); a 30 % subset model spends the same budget on fewer documents (~3 passes). At an equal
retraining cost, fixed epochs would give the same subset models (3 epochs of 855 documents = 320 steps) but a full
model trained 3.3x longer than any of them, in a different regime from the models that define the ground truth.
With fixed steps the attributed model and the retrained ones share the training length and the learning-rate
schedule, two subsets differ only in *which* documents the same budget went to (not in how far training got), and
``retrain`` on the full mask is the full model.

*Same initialisation, different data.* ``retrain(masks, seeds)`` uses each seed for the data order only; every
model starts from the setting's seed (``fixed_init``). Measured on the full scale (one fixed 30 % subset, three
extra seeds): init + order noise gave a query-loss std of 0.102, order noise alone 0.058, against 0.075 across
subsets, so with a random init the seed noise would dominate the subset effect.

Measured for the full scale (2 cores shared with other jobs, load average 2-4): held-out query loss 5.05 nats/token
(unigram cross-entropy 6.48; wiki 5.23, shakespeare 5.00, tales 5.08, math 4.90); 30 % subset models 5.03 on
average; a query's loss varies 1.7x more across six random 30 % subsets (std 0.068) than across four data-order
seeds on one subset (std 0.040); one retrain takes ~20 s on one thread, ~21 s per retrain effective with two
workers under that load (~10-11 s on an idle machine), so 64 retrains take about 12-25 minutes.

Speed: one model trains on one thread; ``retrain`` trains ``workers`` models at once in separate processes (by
default one per available core; in-process for the smoke scale). On two shared cores one retrain took 19-22 s on
one thread and 111-203 s on two threads: torch's threads oversubscribe busy cores, so never give a model more than
one thread here.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curate.proxy.retrain import train_rows
from stride_engine.adapters import CausalLMAdapter, token_losses_mean
from stride_engine.artifacts import atomic_path
from stride_engine.corpus import token_batch

from .base import Batch, ExampleSet, Setting

__all__ = ["DEFAULT_DATA", "DOMAINS", "SCALES", "PretrainSetting", "query_losses", "train_causal_lm"]

DOMAINS = ("wiki", "shakespeare", "tales", "math")
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MARKER = "COMPLETE"

# Per-scale configuration. "smoke" trains in a few seconds (CI); "full" is sized so that 64 retrains on 30 %
# subsets fit in ~20-25 minutes on two cores (two one-thread workers).
SCALES: dict[str, dict[str, Any]] = {
    "smoke": {
        "train_per_domain": {"wiki": 50, "shakespeare": 50, "tales": 50, "math": 50},
        "queries_per_domain": 5,
        "max_length": 128,
        "vocab_size": 1024,
        "model": {"hidden_size": 64, "num_layers": 2, "num_heads": 4},
        "train": {"steps": 40, "batch_size": 16, "lr": 3e-3, "warmup": 4, "final_lr": 0.0, "fixed_init": True},
        "seed": 0,
    },
    "full": {
        "train_per_domain": {"wiki": 800, "shakespeare": 800, "tales": 450, "math": 800},
        "queries_per_domain": 40,
        "max_length": 128,
        "vocab_size": 2048,
        "model": {"hidden_size": 96, "num_layers": 2, "num_heads": 4},
        "train": {"steps": 320, "batch_size": 8, "lr": 3e-3, "warmup": 20, "final_lr": 0.0, "fixed_init": True},
        "seed": 0,
    },
}


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ training


def _fresh_model(model_config: dict[str, Any], seed: int):
    import transformers

    config = transformers.LlamaConfig(**model_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    return model


def train_causal_lm(
    input_ids: np.ndarray,
    lengths: np.ndarray,
    model_config: dict[str, Any],
    train: dict[str, Any],
    seed: int,
    init_seed: int | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
):
    """Train a causal LM on the rows of `input_ids` (right-padded, `lengths` real tokens each) for
    `train["steps"]` optimiser steps, on one thread. The order of the rows comes from `seed`; the initial weights
    are `init_state` (fine-tuning) or a fresh initialisation from `init_seed` (default: `seed`). Deterministic for
    its arguments. Returns the model in eval mode."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _fresh_model(model_config, seed if init_seed is None else init_seed)
        if init_state is not None:
            model.load_state_dict(init_state)
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        lens = torch.as_tensor(lengths, dtype=torch.long)
        batch_size, total = int(train["batch_size"]), int(train["steps"])
        if len(ids) == 0:
            raise ValueError("cannot train on an empty subset")
        train_rows(model, ids, lens, total, batch_size, float(train["lr"]), int(seed), int(train["warmup"]),
                   float(train.get("final_lr", 0.0)))
    finally:
        torch.set_num_threads(previous_threads)
    return model.eval()


@torch.no_grad()
def query_losses(model, tensors: Batch, batch_size: int = 64) -> np.ndarray:
    """Mean next-token cross-entropy of every row (the positions `target_mask` marks), float64 (n,)."""
    out = []
    for start in range(0, len(tensors["input_ids"]), batch_size):
        rows = {k: v[start : start + batch_size] for k, v in tensors.items()}
        logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"], use_cache=False).logits
        out.append(token_losses_mean(logits, rows["input_ids"], rows["target_mask"]).double().numpy())
    return np.concatenate(out)


def _retrain_job(job: dict[str, Any]) -> np.ndarray:
    """One retrain: train on the given rows, return the query losses (one thread throughout)."""
    model = train_causal_lm(
        job["input_ids"],
        job["lengths"],
        job["model_config"],
        job["train"],
        job["seed"],
        job.get("init_seed"),
        job.get("init_state"),
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return query_losses(model, job["queries"])
    finally:
        torch.set_num_threads(previous)


def _worker_main(jobs_path: str, out_path: str) -> None:
    """Entry point of a worker process: run the pickled jobs in order, save their losses."""
    with open(jobs_path, "rb") as handle:
        jobs = pickle.load(handle)
    np.save(out_path, np.stack([_retrain_job(job) for job in jobs]))


_WORKER_CODE = (
    "import sys; from benchmarks.settings.pretrain import _worker_main; _worker_main(sys.argv[1], sys.argv[2])"
)


def run_jobs(jobs: list[dict[str, Any]], workers: int) -> np.ndarray:
    """Run retrain jobs, `workers` fresh Python processes at once (one thread each), in job order.

    Plain subprocesses rather than multiprocessing: a spawned multiprocessing child re-imports the caller's main
    script (which breaks scripts without a main guard), and forking a process that has run torch's thread pool
    can hang. Each worker pays the torch/transformers import once (~3-5 s) per call.
    """
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        return np.stack([_retrain_job(job) for job in jobs])
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    shares = [list(range(w, len(jobs), workers)) for w in range(workers)]
    results: list[np.ndarray | None] = [None] * len(jobs)
    with tempfile.TemporaryDirectory(prefix="retrain-") as tmp:
        processes = []
        try:
            for w, share in enumerate(shares):
                jobs_path, out_path, log_path = (Path(tmp) / f"{w}.{ext}" for ext in ("pkl", "npy", "log"))
                with open(jobs_path, "wb") as handle:
                    pickle.dump([jobs[i] for i in share], handle)
                with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
                    cmd = [sys.executable, "-c", _WORKER_CODE, str(jobs_path), str(out_path)]
                    processes.append(subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT))
            codes = [process.wait() for process in processes]
        finally:  # interrupted: stop the workers this call started
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        failures = []
        for w, code in enumerate(codes):
            if code != 0:
                tail = (Path(tmp) / f"{w}.log").read_text(errors="replace")[-3000:]
                failures.append(f"worker {w} exited with {code}:\n{tail}")
        if failures:
            raise RuntimeError("retraining failed in a worker process\n" + "\n".join(failures))
        for w, share in enumerate(shares):
            for row, losses in zip(share, np.load(Path(tmp) / f"{w}.npy")):
                results[row] = losses
    return np.stack(results)


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------------------------------ the setting


class CausalLMSetting(Setting):
    """What the language-model settings share: a full model trained once and cached (tokenizer and model saved with
    save_pretrained, a completion marker written last), the engine adapter, per-example losses, mask checks."""

    kind = "causal-lm"
    folder: Path
    _model = None
    _tokenizer = None

    def _cached_model(self, train) -> Any:
        """`train()` -> the model, run only when `self.folder/model` holds no finished model; then load from disk."""
        if self._model is None:
            folder = self.folder / "model"
            if not (folder / MARKER).is_file():
                started = time.perf_counter()
                model = train()
                seconds = time.perf_counter() - started
                with atomic_path(folder) as tmp:
                    self._tokenizer.save_pretrained(tmp)
                    model.save_pretrained(tmp, safe_serialization=True)
                    summary = {"description": self.describe(), "train_seconds": round(seconds, 1)}
                    (tmp / MARKER).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")  # last
            from transformers import AutoModelForCausalLM

            self._model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, dtype=torch.float32
            ).eval()
        return self._model

    def adapter(self) -> CausalLMAdapter:
        # The adapter freezes its model's parameters; give it its own copy so `model()` stays differentiable.
        import copy

        return CausalLMAdapter(copy.deepcopy(self.model()))

    def tokenizer(self):
        return self._tokenizer

    def example_losses(self, model, batch: Batch) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return token_losses_mean(logits, batch["input_ids"], batch["target_mask"])

    def _checked_masks(self, masks: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[1] != len(self.train):
            raise ValueError(f"masks must be (M, {len(self.train)}), got {masks.shape}")
        if len(seeds) != len(masks):
            raise ValueError(f"{len(masks)} masks but {len(seeds)} seeds")
        return masks


class PretrainSetting(CausalLMSetting):
    """A small Llama pre-trained from scratch on a four-domain sample; queries are held-out documents.

    `scale` picks a configuration from ``SCALES`` ("smoke" for CI, "full" for the benchmark); `config` replaces it
    (experiments). `cache` holds the tokenizer and the full model, in a folder keyed by a hash of the configuration
    and the selected documents. `data` is the shared data folder (with ``corpus/``). `workers`: retrains run at
    once (default: one per core for "full", in-process for "smoke"); it does not change any result.
    """

    name = "pretrain"
    SCALES = SCALES  # a subclass with another model or sample gives its own

    def __init__(
        self,
        scale: str = "full",
        cache: Path = Path(__file__).resolve().parents[1] / "cache",
        data: Path = DEFAULT_DATA,
        *,
        workers: int | None = None,
        config: dict[str, Any] | None = None,
    ):
        if scale not in self.SCALES:
            raise ValueError(f"scale must be one of {sorted(self.SCALES)}, got {scale!r}")
        self.scale = scale
        self.config = json.loads(json.dumps(config if config is not None else self.SCALES[scale]))
        self.cache = Path(cache)
        self.data = Path(data)
        self.workers = workers
        self.seed = int(self.config["seed"])
        train_docs, query_docs = self._select_documents()
        self._files = [f"corpus/{domain}.jsonl" for domain in DOMAINS]
        self._core = {
            "setting": self.name,
            "scale": scale,
            "config": self.config,
            "data_files": self._files,
            "train_ids_sha256": _sha([d["id"] for d in train_docs]),
            "query_ids_sha256": _sha([d["id"] for d in query_docs]),
            "train_text_sha256": _sha([d["text"] for d in train_docs]),
            "query_text_sha256": _sha([d["text"] for d in query_docs]),
        }
        self.folder = self.cache / f"{self.name}-{scale}-{_sha(self._core)[:12]}"
        self._tokenizer = self._load_or_train_tokenizer([d["text"] for d in train_docs])
        self.train = self._encode(train_docs)
        self.queries = self._encode(query_docs)
        self._model = None

    # ------------------------------------------------------------------------------------------ data

    def _select_documents(self) -> tuple[list[dict], list[dict]]:
        corpus = self.data / "corpus"
        missing = [corpus / f"{domain}.jsonl" for domain in DOMAINS if not (corpus / f"{domain}.jsonl").is_file()]
        if missing:
            raise FileNotFoundError(
                f"the pretrain setting needs the shared four-domain corpus, but {', '.join(map(str, missing))} "
                f"is missing (data folder: {self.data}); it is the project's shared data (../shared/data), "
                "which a plain clone does not have"
            )
        rng = np.random.default_rng(self.seed)
        train, queries, seen_texts = [], [], set()
        n_queries = int(self.config["queries_per_domain"])
        for domain in DOMAINS:
            docs = []
            with open(corpus / f"{domain}.jsonl", encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        record = json.loads(line)
                        text = record["text"].strip()
                        if len(text) >= 200 and text not in seen_texts:  # long enough to fill most of a row
                            seen_texts.add(text)
                            docs.append({"id": record["id"], "text": text, "domain": domain})
            n_train = int(self.config["train_per_domain"][domain])
            if n_train + n_queries > len(docs):
                raise ValueError(
                    f"{domain}: {n_train} training + {n_queries} query documents asked, {len(docs)} available"
                )
            order = rng.permutation(len(docs))
            train += [docs[i] for i in order[:n_train]]
            queries += [docs[i] for i in order[n_train : n_train + n_queries]]
        return train, queries

    def _load_or_train_tokenizer(self, texts: list[str]):
        from transformers import AutoTokenizer

        folder = self.folder / "tokenizer"
        if not (folder / MARKER).is_file():
            from curate.demo.model import train_tokenizer

            tokenizer = train_tokenizer(texts, vocab_size=int(self.config["vocab_size"]))
            with atomic_path(folder) as tmp:
                tokenizer.save_pretrained(tmp)
                (tmp / MARKER).write_text("complete\n")
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def _encode(self, docs: list[dict]) -> ExampleSet:
        tok, width = self._tokenizer, int(self.config["max_length"])
        encoded = tok([d["text"] for d in docs], add_special_tokens=False)["input_ids"]
        input_ids = np.full((len(docs), width), tok.pad_token_id, dtype=np.int64)
        lengths = np.zeros(len(docs), dtype=np.int64)
        texts = []
        for row, tokens in enumerate(encoded):
            seq = ([tok.bos_token_id] + list(tokens) + [tok.eos_token_id])[:width]
            input_ids[row, : len(seq)] = seq
            lengths[row] = len(seq)
            texts.append(tok.decode(seq, skip_special_tokens=True).strip())
        return ExampleSet(
            tensors=token_batch(input_ids, lengths, None),
            ids=[d["id"] for d in docs],
            texts=texts,
            domains=[d["domain"] for d in docs],
        )

    # ------------------------------------------------------------------------------------------ model

    def _model_config(self) -> dict[str, Any]:
        tok, m = self._tokenizer, self.config["model"]
        return {
            "vocab_size": len(tok),
            "hidden_size": int(m["hidden_size"]),
            "intermediate_size": 4 * int(m["hidden_size"]),
            "num_hidden_layers": int(m["num_layers"]),
            "num_attention_heads": int(m["num_heads"]),
            "num_key_value_heads": int(m["num_heads"]),
            "max_position_embeddings": int(self.config["max_length"]),
            "tie_word_embeddings": True,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        }

    def _init_seed(self, seed: int) -> int:
        return self.seed if self.config["train"].get("fixed_init") else int(seed)

    def _lengths(self, examples: ExampleSet) -> np.ndarray:
        return examples.tensors["attention_mask"].sum(dim=1).numpy()

    def model(self):
        """The model trained on the full training set (eval mode); trained once, then loaded from the cache."""
        return self._cached_model(lambda: train_causal_lm(
            self.train.tensors["input_ids"].numpy(), self._lengths(self.train), self._model_config(),
            self.config["train"], self.seed, self._init_seed(self.seed),
        ))

    # ------------------------------------------------------------------------------------------ ground truth

    def retrain(self, masks: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        masks = self._checked_masks(masks, seeds)
        input_ids, lengths = self.train.tensors["input_ids"].numpy(), self._lengths(self.train)
        jobs = [
            {
                "input_ids": input_ids[mask],
                "lengths": lengths[mask],
                "model_config": self._model_config(),
                "train": self.config["train"],
                "seed": int(seed),
                "init_seed": self._init_seed(int(seed)),
                "queries": self.queries.tensors,
            }
            for mask, seed in zip(masks, seeds)
        ]
        # Worker processes pay ~5 s of start-up each: not worth it for the seconds-long smoke models.
        workers = self.workers or (_available_cores() if self.scale != "smoke" else 1)
        return run_jobs(jobs, workers).astype(np.float64)

    def describe(self) -> dict[str, Any]:
        vocab = self._tokenizer.backend_tokenizer.to_str()
        return {
            **self._core,
            "n_train": len(self.train),
            "n_queries": len(self.queries),
            "tokenizer_sha256": hashlib.sha256(vocab.encode()).hexdigest(),
            "recipe": "fixed optimiser steps; one thread per model; init from the setting seed when fixed_init",
        }
