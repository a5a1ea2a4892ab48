"""Embedded demo assets: a byte-level BPE tokenizer and a small causal LM trained offline on the demo corpus.

Why: the demo command and the fast tests need a real model whose training data is known exactly, so that
attribution results can be checked against the corpus's planted ground truth (see ``curate.demo.corpus``).
Everything is built from scratch on the CPU in a minute or two - no download - and is deterministic for a seed.

``build_demo_assets`` is the entry point: it writes ``corpus.jsonl``, ``queries.jsonl`` and ``model/`` (tokenizer
and model saved with ``save_pretrained``, loadable with ``AutoTokenizer`` / ``AutoModelForCausalLM``). A finished
``model/`` carries a ``DEMO_COMPLETE`` marker, written last, and is reused on the next run when it matches.

Token conventions of the saved tokenizer: ``tokenizer(text)`` prepends ``<|bos|>`` (like Llama tokenizers);
``<|eos|>`` is not added automatically; a text's first word gets a prefix space ("The" and " The" encode alike). Training sequences are ``<|bos|> text <|eos|>``, so a prompt is scored as
``tokenizer(prompt)`` followed by ``tokenizer(completion, add_special_tokens=False)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from curate.demo.corpus import generate_demo_corpus, write_jsonl

__all__ = [
    "DemoAssets",
    "build_demo_assets",
    "build_model",
    "completion_losses",
    "train_model",
    "train_tokenizer",
    "DEMO_CONFIGS",
    "MARKER",
]

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
MARKER = "DEMO_COMPLETE"

# Full and quick builds, tuned on a 2-core CPU. A planted fact is seen only 2-3 times per epoch, so the model needs
# ~10 epochs at a high learning rate to learn most facts; a narrow, shallow model (d96 x 2 layers, ~10k tokens/s
# on one core) is what makes that many epochs fit in the budget. The quick build has 4x fewer steps per epoch,
# so it uses a smaller batch and a few more epochs to get a similar number of updates per fact.
DEMO_CONFIGS: dict[str, dict] = {
    "full": {
        "corpus": {"num_entities": 140, "num_filler": 1450},
        "vocab_size": 2048,
        "model": {"arch": "llama", "hidden_size": 96, "num_layers": 2, "num_heads": 4, "max_length": 128},
        "train": {"epochs": 12, "batch_size": 16, "lr": 3e-3},
    },
    "quick": {
        "corpus": {"num_entities": 48, "num_filler": 400},
        "vocab_size": 2048,
        "model": {"arch": "llama", "hidden_size": 96, "num_layers": 2, "num_heads": 4, "max_length": 128},
        "train": {"epochs": 16, "batch_size": 8, "lr": 3e-3},
    },
}


@dataclass(frozen=True)
class DemoAssets:
    corpus_path: Path
    queries_path: Path
    model_dir: Path
    documents: list[dict]
    queries: list[dict]


# --------------------------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (no unknown bytes possible, like GPT-2's) and wrap it for
    transformers with bos/eos/pad/unk set. BPE may stop below ``vocab_size`` when it runs out of merges."""
    tok = Tokenizer(models.BPE())
    # A prefix space makes the first word of a text the same token as that word mid-text: a query prompt
    # ("The capital of ...") then tokenizes exactly like the fact sentence inside a planted document.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so any text can be encoded
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Prepend bos on encode, as the model was trained with it at position 0.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


def build_model(
    tokenizer,
    *,
    arch: str = "llama",
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    max_length: int = 128,
    seed: int = 0,
) -> transformers.PreTrainedModel:
    """A freshly initialised small causal LM from a config (no download), sized to the tokenizer's vocabulary."""
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "llama":
        config = transformers.LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=max_length,
            tie_word_embeddings=True,  # the embedding matrix is a large share of a tiny model; tying halves it
            **ids,
        )
        model_cls = transformers.LlamaForCausalLM
    elif arch == "gpt2":
        config = transformers.GPT2Config(
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=max_length,
            # No dropout: the model must memorise facts seen only a few times, and determinism helps tests.
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
        model_cls = transformers.GPT2LMHeadModel
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}")
    # Seed only the initialisation, without disturbing the caller's global torch random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


def _encode_documents(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """bos + tokens + eos per document, at most max_length tokens (a document cut short gets no eos)."""
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length - 1)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [([bos] + ids + [eos])[:max_length] for ids in encoded["input_ids"]]


def _epoch_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar-length documents.

    Documents are shuffled, then sorted by length inside windows of 32 batches, cut into batches, and the batches
    shuffled again. Batches stay random from epoch to epoch, but padding (wasted compute on a CPU) drops from
    ~40% to a few percent.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * 32
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _collate(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence; labels are -100 on padding so it never counts in the loss."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention_mask[row, : len(seq)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak (not to zero, so the last steps still learn)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _free_cores() -> int:
    """Cores not already busy with other work, at least 1.

    Why: torch's default of one thread per core is fast on an idle machine, but when other processes already keep
    the cores busy, its spinning OpenMP threads oversubscribe them and a model this small trains 10-50x slower
    (measured here: ~180 tokens/s with 2 threads against ~10k with 1 while two other jobs ran).
    """
    threads = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0]  # runnable processes, averaged over the last minute
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no load average or affinity on this platform
        return threads
    return max(1, min(threads, cores - round(busy)))


def train_model(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    epochs: int,
    batch_size: int = 16,
    lr: float = 3e-3,
    max_length: int = 128,
    seed: int = 0,
    progress: bool = True,
    num_threads: int | None = None,
) -> list[float]:
    """Train ``model`` on ``texts`` (one document per sequence) with AdamW, warmup and cosine decay.

    ``num_threads`` defaults to the cores not already busy (see ``_free_cores``); torch's thread setting is restored
    afterwards. Returns the loss of every optimiser step; the model is left in eval mode.
    """
    sequences = _encode_documents(tokenizer, texts, max_length)
    lengths = [len(s) for s in sequences]
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(sequences) / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # norms and biases
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, total, warmup))

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or _free_cores())
    model.train()
    losses: list[float] = []
    bar = tqdm(total=total, desc="training demo model", unit="step", disable=not progress)
    try:
        for _ in range(epochs):
            for batch_ids in _epoch_batches(lengths, batch_size, generator):
                batch = _collate([sequences[i] for i in batch_ids], tokenizer.pad_token_id)
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.update(1)
                if len(losses) % 10 == 0:
                    bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.3f}")
    finally:
        bar.close()
        model.eval()
        torch.set_num_threads(previous_threads)
    return losses


@torch.no_grad()
def completion_losses(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64) -> list[float]:
    """Mean per-token loss (nats) of each completion given ``<|bos|> prompt``, as the model was trained to see it."""
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        sequences, spans = [], []
        for prompt, completion in zip(prompts[start : start + batch_size], completions[start : start + batch_size]):
            p = tokenizer(prompt)["input_ids"]
            c = tokenizer(completion, add_special_tokens=False)["input_ids"]
            sequences.append(p + c)
            spans.append((len(p), len(p) + len(c)))
        batch = _collate(sequences, tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        for row, (lo, hi) in enumerate(spans):
            targets = batch["input_ids"][row, lo:hi]
            token_lp = logprobs[row, lo - 1 : hi - 1].gather(-1, targets[:, None]).squeeze(-1)
            out.append(-token_lp.mean().item())
    return out


# --------------------------------------------------------------------------------------------------------------
# The demo build
# --------------------------------------------------------------------------------------------------------------


def _fingerprint(config: dict, seed: int, documents: list[dict]) -> dict:
    """What the saved model was built from; a saved model is reused only when all of it matches."""
    corpus_hash = hashlib.sha256(json.dumps(documents, sort_keys=True).encode()).hexdigest()
    return {"seed": seed, "config": config, "corpus_sha256": corpus_hash}


def _reusable(model_dir: Path, fingerprint: dict) -> bool:
    marker = model_dir / MARKER
    if not marker.is_file():
        return False
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return {k: saved.get(k) for k in fingerprint} == json.loads(json.dumps(fingerprint))


def _train_and_save(model_dir: Path, config: dict, documents: list[dict], fingerprint: dict, seed: int, progress: bool) -> None:
    """Train tokenizer and model into a temp folder next to ``model_dir``, then swap it in with one rename, so an
    interrupted run never leaves a model folder that looks complete."""
    texts = [d["text"] for d in documents]
    started = time.perf_counter()
    tokenizer = train_tokenizer(texts, vocab_size=config["vocab_size"])
    tokenizer.model_max_length = config["model"]["max_length"]
    model = build_model(tokenizer, seed=seed, **config["model"])
    losses = train_model(
        model, tokenizer, texts, max_length=config["model"]["max_length"], seed=seed, progress=progress,
        **config["train"],
    )

    tmp = model_dir.with_name(f".{model_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tail = losses[-20:]
    summary = {
        **fingerprint,
        "final_loss": sum(tail) / len(tail),
        "num_steps": len(losses),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    (tmp / MARKER).write_text(json.dumps(summary, indent=2))  # written last: the folder is complete
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)


def build_demo_assets(out_dir: Path, *, seed: int = 0, quick: bool = False, progress: bool = True) -> DemoAssets:
    """Generate the demo corpus and queries into ``out_dir`` and train (or reuse) the demo model in
    ``out_dir/model``. ``quick`` builds a smaller corpus and model for tests."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = DEMO_CONFIGS["quick" if quick else "full"]
    corpus = generate_demo_corpus(seed, **config["corpus"])
    corpus_path = write_jsonl(corpus.documents, out_dir / "corpus.jsonl")
    queries_path = write_jsonl(corpus.queries, out_dir / "queries.jsonl")

    model_dir = out_dir / "model"
    fingerprint = _fingerprint(config, seed, corpus.documents)
    if not _reusable(model_dir, fingerprint):
        _train_and_save(model_dir, config, corpus.documents, fingerprint, seed, progress)
    return DemoAssets(corpus_path, queries_path, model_dir, corpus.documents, corpus.queries)
