"""Training documents and queries: reading JSONL/Parquet, and cutting documents into fixed-length token chunks.

A *chunk* is the unit STRIDE attributes to (an "example" in METHOD.md); `Chunks.doc_index` maps every chunk
back to its document, so scores aggregate to documents. Documents are never packed together: a chunk holds
tokens of one document only, right-padded, which keeps the chunk -> document map exact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import orjson
import polars as pl
import torch

from .errors import CorpusError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class Documents:
    ids: list[str]
    texts: list[str]
    domains: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Chunks:
    input_ids: np.ndarray  # (n_chunks, chunk_length) int64, right-padded with pad_id
    lengths: np.ndarray  # (n_chunks,) real tokens per chunk
    doc_index: np.ndarray  # (n_chunks,) index into Documents
    token_start: np.ndarray  # (n_chunks,) first token's position in its document
    pad_id: int

    def __len__(self) -> int:
        return len(self.lengths)


@dataclass(frozen=True)
class Queries:
    """Queries: a prompt and a continuation; the loss is measured on the continuation's tokens only."""

    ids: list[str]
    prompts: list[str]
    completions: list[str]

    def __len__(self) -> int:
        return len(self.ids)


# --------------------------------------------------------------------------------------------- reading


def iter_records(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line or row number, record) from a JSONL or Parquet file, with errors that name the place."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file {path} does not exist")
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        try:
            frame = pl.read_parquet(path)
        except Exception as err:  # polars raises several types for a bad file
            raise CorpusError(f"{path} is not a readable Parquet file: {err}") from err
        yield from enumerate(frame.iter_rows(named=True), start=1)
    elif name.endswith(JSONL_SUFFIXES):
        with open(path, "rb") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as err:
                    raise CorpusError(f"{path}, line {line_no}: not valid JSON (or not UTF-8): {err}") from err
                if not isinstance(record, dict):
                    raise CorpusError(f"{path}, line {line_no}: expected a JSON object, got {type(record).__name__}")
                yield line_no, record
    else:
        raise CorpusError(f"{path}: unsupported file type; use JSONL ({', '.join(JSONL_SUFFIXES)}) or Parquet")


def read_documents(
    paths: Sequence[Path | str] | Path | str, text_field: str = "text", id_field: str = "id", domain_field: str = "domain"
) -> Documents:
    if isinstance(paths, (str, Path)):  # one file: a str would otherwise be read as a sequence of one-letter paths
        paths = [paths]
    if not paths:
        raise CorpusError("no training files given")
    ids: list[str] = []
    texts: list[str] = []
    domains: list[str | None] = []
    seen: set[str] = set()
    for path in map(Path, paths):
        for line_no, record in iter_records(path):
            where = f"{path}, record {line_no}"
            if text_field not in record:
                raise CorpusError(
                    f"{where} has no '{text_field}' field (fields: {sorted(record)}); "
                    f"name the text field with --text-field / text_field"
                )
            text = record[text_field]
            if not isinstance(text, str):
                raise CorpusError(f"{where}: field '{text_field}' must be a string, got {type(text).__name__}")
            ids.append(_unique_id(record, id_field, f"{path.stem}:{line_no}", seen, where))
            texts.append(text)
            domain = record.get(domain_field)
            domains.append(None if domain is None else str(domain))
    if not ids:
        raise CorpusError(f"the training corpus is empty: no records in {', '.join(map(str, paths))}")
    if not any(text.strip() for text in texts):
        raise CorpusError("the training corpus has records but every text is empty")
    return Documents(ids, texts, domains)


def read_queries(path: Path | str, id_field: str = "id", text_field: str = "text") -> Queries:
    """Queries from JSONL/Parquet: `prompt` + `completion` fields (loss on the completion), or a `text` field."""
    path = Path(path)
    ids: list[str] = []
    prompts: list[str] = []
    completions: list[str] = []
    seen: set[str] = set()
    for line_no, record in iter_records(path):
        where = f"{path}, record {line_no}"
        if isinstance(record.get("completion"), str):
            prompt, completion = record.get("prompt") or "", record["completion"]
        elif isinstance(record.get(text_field), str):
            prompt, completion = "", record[text_field]
        else:
            raise CorpusError(f"{where}: a query needs a 'completion' (with an optional 'prompt') or a '{text_field}' string")
        if not completion.strip():
            raise CorpusError(f"{where}: the query's completion/text is empty")
        ids.append(_unique_id(record, id_field, f"q{line_no}", seen, where))
        prompts.append(prompt)
        completions.append(completion)
    if not ids:
        raise CorpusError(f"the query file {path} is empty")
    return Queries(ids, prompts, completions)


def _unique_id(record: dict, id_field: str, fallback: str, seen: set[str], where: str) -> str:
    """The record's id (or a positional fallback when it has none); a repeated id is an error."""
    value = str(record[id_field]) if record.get(id_field) is not None else fallback
    if value in seen:
        raise CorpusError(f"{where}: duplicate id {value!r}")
    seen.add(value)
    return value


# -------------------------------------------------------------------------------------------- tokenising


def pad_token_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def chunk_documents(documents: Documents, tokenizer, chunk_length: int, batch_documents: int = 4096) -> Chunks:
    """Tokenise every document (bos + text + eos where the tokenizer has them) and cut it into windows.

    Documents are tokenised `batch_documents` at a time and each batch's windows packed into arrays at once: the
    tokenizer's Python lists for the whole pool would take several times the arrays' memory."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad_id = pad_token_id(tokenizer)
    parts: list[tuple[np.ndarray, ...]] = []
    texts = list(documents.texts)
    for first in range(0, len(texts), batch_documents):
        encoded = tokenizer(texts[first:first + batch_documents], add_special_tokens=False)["input_ids"]
        rows, lengths, doc_index, starts = [], [], [], []
        for offset, tokens in enumerate(encoded):
            tokens = ([bos] if bos is not None else []) + list(tokens) + ([eos] if eos is not None else [])
            for start in range(0, len(tokens), chunk_length):
                window = tokens[start : start + chunk_length]
                if len(window) < 2:  # nothing to predict
                    continue
                rows.append(window + [pad_id] * (chunk_length - len(window)))
                lengths.append(len(window))
                doc_index.append(first + offset)
                starts.append(start)
        if rows:
            parts.append(tuple(np.asarray(values, dtype=np.int64) for values in (rows, lengths, doc_index, starts)))
    if not parts:
        raise CorpusError("no document produced a chunk of at least 2 tokens: the corpus is effectively empty")
    input_ids, lengths, doc_index, starts = (np.concatenate(column) for column in zip(*parts))
    return Chunks(input_ids=input_ids, lengths=lengths, doc_index=doc_index, token_start=starts, pad_id=pad_id)


def chunks_table(chunks: Chunks, documents: Documents) -> pl.DataFrame:
    """chunk_id, doc_id, token span, domain and a hash of the chunk's tokens (DESIGN.md's chunks.parquet)."""
    hashes = [hashlib.sha1(row[:n].tobytes()).hexdigest()[:16] for row, n in zip(chunks.input_ids, chunks.lengths)]
    return pl.DataFrame(
        {
            "chunk_id": np.arange(len(chunks), dtype=np.int64),
            "doc_index": chunks.doc_index,
            "doc_id": [documents.ids[i] for i in chunks.doc_index],
            "token_start": chunks.token_start,
            "token_end": chunks.token_start + chunks.lengths,
            "domain": [documents.domains[i] for i in chunks.doc_index],
            "token_hash": hashes,
        }
    )


def encode_queries(queries: Queries, tokenizer, max_length: int) -> dict[str, torch.Tensor]:
    """Token batch for queries; `loss_mask` marks the completion tokens (the ones whose loss is the response)."""
    bos = tokenizer.bos_token_id
    pad_id = pad_token_id(tokenizer)
    rows, masks = [], []
    for query_id, prompt, completion in zip(queries.ids, queries.prompts, queries.completions):
        prompt_ids = ([bos] if bos is not None else []) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if not completion_ids:
            raise CorpusError(f"query {query_id!r}: the completion encodes to no tokens")
        tokens = prompt_ids + completion_ids
        if len(tokens) > max_length:
            raise CorpusError(
                f"query {query_id!r} is {len(tokens)} tokens long, more than the model's window ({max_length}); shorten it"
            )
        if len(tokens) < 2:
            raise CorpusError(f"query {query_id!r} is a single token: nothing to predict")
        rows.append(tokens)
        masks.append([0] * len(prompt_ids) + [1] * len(completion_ids))
    width = max(map(len, rows))
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    loss_mask = np.zeros((len(rows), width), dtype=np.float32)
    lengths = np.zeros(len(rows), dtype=np.int64)
    for i, (tokens, mask) in enumerate(zip(rows, masks)):
        input_ids[i, : len(tokens)] = tokens
        loss_mask[i, : len(mask)] = mask
        lengths[i] = len(tokens)
    return token_batch(input_ids, lengths, loss_mask)


def token_batch(input_ids: np.ndarray, lengths: np.ndarray, loss_mask: np.ndarray | None) -> dict[str, torch.Tensor]:
    """Tensors the adapters take: ids, attention mask, and which positions' *next-token* loss counts.

    `target_mask[:, t]` weighs the prediction of token t+1 from position t.
    """
    width = input_ids.shape[1]
    positions = np.arange(width)[None, :]
    attention = (positions < lengths[:, None]).astype(np.int64)
    if loss_mask is None:
        loss_mask = attention.astype(np.float32)
        loss_mask[:, 0] = 0.0  # the first token is never predicted
    target_mask = np.zeros((len(input_ids), width), dtype=np.float32)
    target_mask[:, :-1] = loss_mask[:, 1:] * attention[:, 1:]
    return {
        "input_ids": torch.from_numpy(np.ascontiguousarray(input_ids)),
        "attention_mask": torch.from_numpy(attention),
        "target_mask": torch.from_numpy(target_mask),
    }
