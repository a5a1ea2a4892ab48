"""Proxy retraining: train a fresh copy of a model's architecture, from scratch, on a selected dataset.

A selection is judged by what a model trained on it can do. The proxy has the base model's configuration and
tokenizer but new, seeded weights, so two selections compared with the same base, seed and steps differ only in
their data. ``train_proxy`` reads any dataset folder (JSONL, gzipped JSONL, Parquet: what datatrove's writers
produce) or file, trains, and saves a Hugging Face model folder with a ``training.json`` record.

The recipe is the project's tiny-Llama pre-training recipe (``train_rows``, which the benchmark's ground-truth
retraining also uses): AdamW (betas 0.9/0.95, weight decay 0.01 on matrices only),
gradient clipping at 1, linear warm-up then cosine decay to zero (the last updates barely move the weights,
which damps data-order noise between proxies), a fixed number of optimiser steps, batches drawn from a fresh
seeded shuffle of the rows each epoch.

*Packed rows, not truncated documents.* Every document becomes ``bos text eos`` and the token stream is cut
into ``seq_len``-token rows. Truncating one document per row would drop most of every long document, so a
selection that keeps long documents would be judged on their openings only; and with padding, a step would see
fewer real tokens for short-document selections than for long ones. Packed, every selected token is trainable
and every step trains on ``batch_size * seq_len`` tokens whatever the selection, so proxies of different
selections get the same compute. Rows may span a document boundary; ``bos``/``eos`` mark it, as in GPT-style
pre-training.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import CurateError
from stride_engine.artifacts import atomic_path

__all__ = [
    "DATA_SUFFIXES", "data_files", "max_positions", "read_texts", "resolve_device", "selected_folder", "train_proxy", "train_rows",
]

DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
# 1000 steps x 8 rows x 128 tokens = 1M tokens, about one pass over a 3,000-document selection of ~300-token
# documents; measured ~15 steps/s for a d96 x 2-layer Llama (the demo size) on one CPU thread: about a minute.
DEFAULT_STEPS = 1000
DEFAULT_LEARNING_RATE = 3e-3  # the tiny-Llama recipe's peak; from-scratch tiny models tolerate it
WARMUP_FRACTION = 0.05
LOSS_WINDOW = 10  # the first/final training loss are means over this many steps (single batches are noisy)


# ------------------------------------------------------------------------------------------------ data


def selected_folder(folder: Path) -> Path:
    """The documents of a dataset folder: for a `curate select` output (a manifest.json naming `files.selected`),
    its selected/ part only (the same folder also holds excluded/, which a proxy must never train on)."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return folder
    try:
        selected = json.loads(manifest.read_text()).get("files", {}).get("selected")
    except (json.JSONDecodeError, AttributeError) as err:
        raise CurateError(f"{manifest} is not a selection manifest (JSON with files.selected): {err}") from err
    return folder / selected if isinstance(selected, str) else folder


def data_files(data: Path | list[Path]) -> list[Path]:
    """The readable dataset files under `data`: each a file, or a folder searched recursively (sorted; a
    selection folder's selected/ part only)."""
    sources = [Path(p) for p in (data if isinstance(data, (list, tuple)) else [data])]
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            source = selected_folder(source)
        if source.is_file():
            files.append(source)
        elif source.is_dir():
            # Hidden files and folders are other tools' temporary or bookkeeping files, never documents.
            found = [
                p for p in source.rglob("*")
                if p.is_file() and p.name.endswith(DATA_SUFFIXES)
                and not any(part.startswith(".") for part in p.relative_to(source).parts)
            ]
            files += sorted(found)
        else:
            raise CurateError(f"data not found: {source} (give a dataset folder or a .jsonl/.jsonl.gz/.parquet file)")
    if not files:
        raise CurateError(
            f"no dataset files (*{', *'.join(DATA_SUFFIXES)}) in {', '.join(map(str, sources))}"
        )
    unreadable = [p for p in files if not p.name.endswith(DATA_SUFFIXES)]
    if unreadable:
        raise CurateError(f"{unreadable[0]} is not a .jsonl, .jsonl.gz or .parquet file")
    return files


class _MissingTextField(Exception):
    pass


def _strict_adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:
    """datatrove's default adapter silently turns a missing text field into an empty (skipped) document; a
    selection whose documents lack the field is a wrong `text_field`, which must stop the run."""
    if self.text_key not in data:
        raise _MissingTextField(f"{path}: document {id_in_file} has no {self.text_key!r} field (fields: {sorted(data)})")
    return self._default_adapter(data, path, id_in_file)


def read_texts(files: list[Path], text_field: str = "text") -> Iterator[str]:
    """The non-empty texts of `files`, in order, read with datatrove's readers (what its writers wrote)."""
    from datatrove.pipeline.readers import JsonlReader, ParquetReader

    for path in files:
        reader_class = ParquetReader if path.name.endswith(".parquet") else JsonlReader
        reader = reader_class(str(path.parent), text_key=text_field, adapter=_strict_adapter, recursive=False)
        try:
            for document in reader.read_file(path.name):
                yield document.text
        except _MissingTextField as err:
            raise CurateError(f"{err}; pass the field that holds the text (text_field / --text-field)") from err
        except Exception as err:  # a corrupt gzip or Parquet file: name it rather than show a reader traceback
            raise CurateError(f"could not read {path}: {err}") from err


def _packed_rows(texts: Iterator[str], tokenizer, seq_len: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token rows (n, seq_len), right-padded, their real lengths (only the last row may be short), and the number
    of documents. Each document is `bos text eos`; without a bos token, `eos` alone separates documents."""
    stream: list[int] = []
    documents = 0
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    batch: list[str] = []

    def flush() -> None:
        if not batch:  # a corpus of exactly 1,000·k documents ends on an empty batch, which tokenizers refuse
            return
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            stream.extend(start + ids + end)
        batch.clear()

    for text in tqdm(texts, desc="tokenising", unit="doc", disable=not progress):
        batch.append(text)
        documents += 1
        if len(batch) == 1000:
            flush()
    flush()
    if documents == 0:
        return torch.empty(0, seq_len, dtype=torch.long), torch.empty(0, dtype=torch.long), 0
    n_rows = math.ceil(len(stream) / seq_len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (end or [0])[0]
    ids = torch.full((n_rows * seq_len,), pad, dtype=torch.long)
    ids[: len(stream)] = torch.as_tensor(stream, dtype=torch.long)
    lengths = torch.full((n_rows,), seq_len, dtype=torch.long)
    lengths[-1] = len(stream) - (n_rows - 1) * seq_len
    return ids.view(n_rows, seq_len), lengths, documents


# ------------------------------------------------------------------------------------------------ model


def _load_base(base: Path):
    """The base's configuration and tokenizer; CurateError when `base` is not a local Hugging Face causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base = Path(base)
    if not (base / "config.json").is_file():
        raise CurateError(f"base model {base} is not a Hugging Face model folder (no config.json there)")
    try:
        config = AutoConfig.from_pretrained(base, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise CurateError(f"could not load the configuration and tokenizer of base model {base}: {err}") from err
    if type(config) not in AutoModelForCausalLM._model_mapping:
        raise CurateError(f"base model {base} ({config.model_type}) is not a causal language model architecture")
    return config, tokenizer


def max_positions(config) -> int | None:
    """The model's context window from its configuration, or None when the configuration does not say."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def resolve_device(name: str) -> str:
    """"cpu", "cuda", "cuda:N" or "auto" (a GPU when there is one); CurateError for a GPU that is not there."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CurateError(f"device {name!r} was asked for, but torch sees no CUDA device; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise CurateError(f"device {name!r} is not cpu, cuda, cuda:N or auto")
    return name


def _fresh_model(config, seed: int):
    from transformers import AutoModelForCausalLM

    # fork_rng: seeding the initialisation must not change the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _lr_factor(step: int, total: int, warmup: int, final: float = 0.0) -> float:
    """Linear warm-up, then cosine decay from the peak to `final` times the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_rows(model, ids: torch.Tensor, lengths: torch.Tensor, steps: int, batch_size: int, learning_rate: float,
               seed: int, warmup: int, final_lr: float = 0.0, progress: bool = False) -> list[float]:
    """`steps` AdamW updates on batches of rows (right-padded `ids`, `lengths` real tokens each; a fresh seeded
    shuffle per epoch); returns the loss of every step. Deterministic for its arguments. The benchmark's
    retraining uses the same loop, so a proxy and a ground-truth retrain follow one recipe."""
    generator = torch.Generator().manual_seed(seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate, betas=(0.9, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, steps, warmup, final_lr))
    model.train()
    losses: list[float] = []
    order: list[int] = []
    bar = tqdm(range(steps), desc="training proxy", unit="step", disable=not progress)
    for _ in bar:
        if len(order) < batch_size:  # next epoch: a fresh shuffle, appended so every batch is full
            order += torch.randperm(len(ids), generator=generator).tolist()
        rows, order = order[:batch_size], order[batch_size:]
        width = int(lengths[rows].max())
        device = next(model.parameters()).device
        batch_ids = ids[rows, :width].to(device)
        attention = (torch.arange(width)[None, :] < lengths[rows, None]).long().to(device)
        labels = batch_ids.masked_fill(attention == 0, -100)
        loss = model(input_ids=batch_ids, attention_mask=attention, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return losses


# ------------------------------------------------------------------------------------------------ entry point


def train_proxy(
    data: Path | list[Path],
    out: Path,
    base: Path,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    batch_size: int = 8,
    seq_len: int = 128,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    text_field: str = "text",
    progress: bool = True,
    overwrite: bool = False,
    device: str = "cpu",
) -> Path:
    """Train a fresh model with `base`'s configuration and tokenizer on the documents of `data` (a dataset
    folder, a file, or a list of them) and save it to `out` (a Hugging Face model folder plus `training.json`).

    Seeded by `seed` (initial weights and data order); trained on `device` ("cpu", "cuda", "auto"). `out` appears only when training finished; an existing
    `out` is refused unless `overwrite` (it is then replaced at the end, not before). Returns `out`."""
    out = Path(out)
    if steps < 1 or batch_size < 1 or seq_len < 2 or learning_rate <= 0:
        raise CurateError(
            f"steps ({steps}), batch_size ({batch_size}) must be >= 1, seq_len ({seq_len}) >= 2, "
            f"learning_rate ({learning_rate}) > 0"
        )
    if out.exists() and not overwrite:
        raise CurateError(f"{out} already exists; choose another output folder or pass overwrite (--overwrite)")
    device = resolve_device(device)
    files = data_files(data)
    config, tokenizer = _load_base(base)
    positions = max_positions(config)
    if positions is not None and seq_len > positions:
        raise CurateError(f"seq_len {seq_len} is longer than base model {base}'s {positions} positions; use seq_len <= {positions}")

    started = time.perf_counter()
    ids, lengths, documents = _packed_rows(read_texts(files, text_field), tokenizer, seq_len, progress)
    if documents == 0:
        raise CurateError(f"no documents with a non-empty {text_field!r} field in {', '.join(map(str, files))}")
    model = _fresh_model(config, seed).to(device)
    losses = train_rows(model, ids, lengths, steps, batch_size, learning_rate, seed, max(1, round(WARMUP_FRACTION * steps)),
                        progress=progress)
    window = min(LOSS_WINDOW, len(losses))
    record = {
        "base": str(Path(base).resolve()),
        "data_files": [str(p.resolve()) for p in files],
        "text_field": text_field,
        "documents": documents,
        "tokens": int(lengths.sum()),
        "rows": len(ids),
        "epochs": round(steps * batch_size / len(ids), 3),
        "steps": steps,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "learning_rate": learning_rate,
        "warmup_steps": max(1, round(WARMUP_FRACTION * steps)),
        "seed": seed,
        "device": device,
        "first_train_loss": sum(losses[:window]) / window,
        "final_train_loss": sum(losses[-window:]) / window,
        "losses": [round(loss, 5) for loss in losses],
        "seconds": round(time.perf_counter() - started, 1),
        "recipe": "packed bos+text+eos rows; AdamW 0.9/0.95, wd 0.01 on matrices, clip 1, warm-up + cosine to 0",
    }
    with atomic_path(out) as tmp:
        model.eval().cpu().save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
