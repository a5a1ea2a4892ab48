"""Benchmark items an audit looks for: a JSONL/Parquet file with configurable fields, or an lm-eval task.

An item has a question (the prompt: `doc_to_text` for a task), an answer (the target or worked solution:
`doc_to_target`), and optionally passages or contexts that come with it (reading-comprehension benchmarks). Each
item belongs to a benchmark, named after its file or task; several benchmarks can be audited at once, and an item
is known by (benchmark, id). Bad input (an unknown field, an empty question, a duplicated id, a task that does not
exist) is an error that names the file and the item.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stride_engine import StrideError
from stride_engine.corpus import JSONL_SUFFIXES, PARQUET_SUFFIXES, iter_records

from ..errors import CurateError


@dataclass(frozen=True)
class BenchmarkItem:
    benchmark: str
    id: str
    question: str
    answer: str = ""
    context: str = ""  # the passages a benchmark's item comes with, joined; empty for most

    @property
    def key(self) -> str:
        return f"{self.benchmark}/{self.id}"


@dataclass(frozen=True)
class ItemFields:
    """Which fields of a benchmark file hold what; a task's items come from its own doc_to_text / doc_to_target."""

    question: str = "question"
    answer: str = "answer"
    id: str = "id"
    context: tuple[str, ...] = ()


def load_benchmarks(
    specs: Sequence[str | Path], fields: ItemFields = ItemFields(), task_dirs: Sequence[Path] = (), limit: int | None = None,
) -> list[BenchmarkItem]:
    """The items of every benchmark, in order; two benchmarks of one name are an error (their items would clash)."""
    if not specs:
        raise CurateError("no benchmark given: pass --benchmark with a JSONL/Parquet file of items or an lm-eval task")
    items: list[BenchmarkItem] = []
    names: set[str] = set()
    for spec in specs:
        loaded = load_benchmark(spec, fields, task_dirs, limit)
        name = loaded[0].benchmark
        if name in names:
            raise CurateError(f"two benchmarks are named {name!r}: rename one of the files")
        names.add(name)
        items.extend(loaded)
    return items


def load_benchmark(
    spec: str | Path, fields: ItemFields = ItemFields(), task_dirs: Sequence[Path] = (), limit: int | None = None,
) -> list[BenchmarkItem]:
    text = str(spec)
    if text.lower().endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES):
        items = _file_items(Path(text), fields, limit)
    else:
        items = _task_items(text, task_dirs, limit)
    if not items:
        raise CurateError(f"benchmark {text} has no items")
    return items


def items_digest(items: Sequence[BenchmarkItem]) -> str:
    """What the audit looked for, as a short digest a manifest can record and a rerun compare."""
    payload = json.dumps([[i.benchmark, i.id, i.question, i.answer, i.context] for i in items]).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def _file_items(path: Path, fields: ItemFields, limit: int | None) -> list[BenchmarkItem]:
    if not path.is_file():
        raise CurateError(f"benchmark file {path} does not exist")
    name = path.name.split(".")[0]
    items: list[BenchmarkItem] = []
    seen: set[str] = set()
    try:
        for line, record in iter_records(path):
            if limit is not None and len(items) >= limit:
                break
            where = f"benchmark {path}, {'row' if path.name.lower().endswith(PARQUET_SUFFIXES) else 'line'} {line}"
            if not items:  # field names are checked once, on the first record, against what it has
                _check_fields(record, fields, where)
            question = _text(record.get(fields.question), fields.question, where)
            if not question.strip():
                raise CurateError(f"{where}: the question field {fields.question!r} is empty")
            raw_id = record.get(fields.id)
            item_id = str(raw_id) if raw_id is not None else f"{name}:{line}"
            if item_id in seen:
                raise CurateError(f"{where}: item id {item_id!r} appears twice (ids must be unique within a benchmark)")
            seen.add(item_id)
            answer = _text(record.get(fields.answer), fields.answer, where) if fields.answer else ""
            context = "\n\n".join(_text(record.get(f), f, where) for f in fields.context)
            items.append(BenchmarkItem(name, item_id, question, answer, context))
    except StrideError as err:  # unreadable file, bad JSON, not UTF-8: the reader names the line
        raise CurateError(f"benchmark {path}: {err}") from err
    return items


def _check_fields(record: dict, fields: ItemFields, where: str) -> None:
    wanted = [fields.question, *([fields.answer] if fields.answer else []), *fields.context]
    missing = [f for f in wanted if f not in record]
    if missing:
        raise CurateError(
            f"{where}: no field {', '.join(map(repr, missing))}; the item has {sorted(record)} "
            "(name the fields with --question-field, --answer-field, --context-field)"
        )


def _text(value, field: str, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):  # a list of passages or of answer aliases
        return "\n".join(map(str, value))
    if not isinstance(value, (str, int, float)):
        raise CurateError(f"{where}: field {field!r} holds {type(value).__name__}, not text")
    return str(value)


def _task_items(spec: str, task_dirs: Sequence[Path], limit: int | None) -> list[BenchmarkItem]:
    from ..proxy.evaluate import task_items  # lm-eval is imported only for task benchmarks

    queries, parts = task_items(spec, list(task_dirs), limit=limit)
    return [
        BenchmarkItem(part, query_id, prompt, completion)
        for query_id, prompt, completion, part in zip(queries.ids, queries.prompts, queries.completions, parts)
    ]
