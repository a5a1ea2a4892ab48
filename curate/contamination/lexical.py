"""The lexical signal: exact n-gram overlap between benchmark items and training documents, on normalised words.

Text is compared as words (`\\w+`, NFKC, case-folded), so punctuation, spacing and case do not hide a copy, and
every word keeps its character offsets in the original text, so a match is reported as spans a reviewer can see.
Each field of an item is indexed on its own: the question (and passages, where a benchmark has them) with
`question_n`-grams; the answer, usually short, with `answer_n`-grams, or as a whole when it has fewer words than
that but at least `answer_min_words` (a one-word answer such as "18" is ordinary text, never evidence alone).

The index holds a 64-bit hash of every n-gram of every item (its memory grows with the benchmark, never with the
corpus); a document is hashed the same way and looked up with one sorted search. An n-gram that occurs in more than
`max_items_per_ngram` items (boilerplate such as "how many ... does she have left") is dropped from the index, as
n-gram decontamination tools do, so it matches nothing.

For a (document, item) pair the signal is the share of the item's words, per field, that lie inside a matched
n-gram (`question_coverage`, `answer_coverage`, `context_coverage`): 1.0 for a verbatim copy, near 0 for a stray
shared phrase.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..errors import CurateError
from .items import BenchmarkItem

FIELDS = ("question", "answer", "context")
_WORD = re.compile(r"\w+")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant: position-dependent mixing of word hashes


@dataclass(frozen=True)
class LexicalSettings:
    question_n: int = 8
    answer_n: int = 6
    answer_min_words: int = 3
    max_items_per_ngram: int = 20

    def check(self) -> None:
        if self.question_n < 2 or self.answer_n < 2:
            raise CurateError(f"n-gram sizes must be at least 2 (got question {self.question_n}, answer {self.answer_n})")
        if not 1 <= self.answer_min_words <= self.answer_n:
            raise CurateError(f"answer_min_words must be between 1 and answer_n ({self.answer_n}), got {self.answer_min_words}")
        if self.max_items_per_ngram < 1:
            raise CurateError("max_items_per_ngram must be at least 1")


@dataclass(frozen=True)
class Words:
    """A text's normalised words and each word's character span in the original text."""

    hashes: np.ndarray  # uint64, one per word
    starts: np.ndarray  # int64
    ends: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.hashes)


def words(text: str) -> Words:
    found = list(_WORD.finditer(text))
    return Words(
        np.fromiter((_word_hash(m.group()) for m in found), dtype=np.uint64, count=len(found)),
        np.fromiter((m.start() for m in found), dtype=np.int64, count=len(found)),
        np.fromiter((m.end() for m in found), dtype=np.int64, count=len(found)),
    )


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


@lru_cache(maxsize=1 << 20)
def _word_hash(word: str) -> np.uint64:
    normal = unicodedata.normalize("NFKC", word).casefold()
    return np.uint64(int.from_bytes(hashlib.blake2b(normal.encode(), digest_size=8).digest(), "little"))


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """One uint64 per n-gram (start position), a polynomial of the word hashes (wrapping arithmetic)."""
    count = len(hashes) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    out = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(n):
            out = out * _MIX + hashes[offset: offset + count]
    return out


@dataclass
class LexicalIndex:
    """The n-grams of every item's fields: sorted hashes and, per entry, the item, field and word position."""

    settings: LexicalSettings
    field_words: np.ndarray  # (items, fields): words per field, 0 where a field is not indexed
    tables: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # n -> keys, item, field, position

    @classmethod
    def build(cls, items: Sequence[BenchmarkItem], settings: LexicalSettings = LexicalSettings()) -> "LexicalIndex":
        settings.check()
        rows: dict[int, list[tuple[np.ndarray, int, int]]] = {}
        field_words = np.zeros((len(items), len(FIELDS)), dtype=np.int64)
        for item_index, item in enumerate(items):
            for field_index, name in enumerate(FIELDS):
                n = _field_n(settings, name, text := getattr(item, name))
                if n is None:
                    continue
                hashes = words(text).hashes
                field_words[item_index, field_index] = len(hashes)
                rows.setdefault(n, []).append((ngram_hashes(hashes, n), item_index, field_index))
        tables = {n: _table(entries, settings.max_items_per_ngram) for n, entries in rows.items()}
        return cls(settings, field_words, tables)

    def match(self, text: str) -> list["ItemMatch"]:
        """Every item that shares an indexed n-gram with the text, with its coverage per field and the text's spans."""
        doc = words(text)
        hits: list[tuple[np.ndarray, ...]] = []
        for n, table in self.tables.items():
            grams = ngram_hashes(doc.hashes, n)
            if not len(grams) or not len(table["keys"]):
                continue
            left = np.searchsorted(table["keys"], grams, side="left")
            right = np.searchsorted(table["keys"], grams, side="right")
            counts = right - left
            found = np.flatnonzero(counts)
            if not len(found):
                continue
            counts = counts[found]
            rows = np.repeat(left[found], counts) + _ranges(counts)
            hits.append((table["item"][rows], table["field"][rows], table["position"][rows],
                         np.repeat(found, counts), np.full(len(rows), n)))
        if not hits:
            return []
        item, fld, position, doc_position, width = (np.concatenate(parts) for parts in zip(*hits))
        return [self._item_match(int(i), fld[item == i], position[item == i], doc_position[item == i], width[item == i], doc)
                for i in np.unique(item)]

    def _item_match(self, item: int, fld, position, doc_position, width, doc: Words) -> "ItemMatch":
        coverage = {}
        spans: list[tuple[int, int, str]] = []
        for field_index, name in enumerate(FIELDS):
            total = int(self.field_words[item, field_index])
            mine = fld == field_index
            if not total or not mine.any():
                coverage[name] = 0.0
                continue
            covered = np.zeros(total, dtype=bool)
            in_doc = np.zeros(len(doc), dtype=bool)
            for p, d, w in zip(position[mine], doc_position[mine], width[mine]):
                covered[p: p + w] = True
                in_doc[d: d + w] = True
            coverage[name] = float(covered.mean())
            spans.extend((start, end, name) for start, end in _runs(in_doc, doc))
        return ItemMatch(item, coverage["question"], coverage["answer"], coverage["context"], sorted(spans))


@dataclass(frozen=True)
class ItemMatch:
    item: int  # index into the audit's items
    question_coverage: float
    answer_coverage: float
    context_coverage: float
    spans: list[tuple[int, int, str]]  # character offsets [start, end) in the document, and the item field matched


def _field_n(settings: LexicalSettings, name: str, text: str) -> int | None:
    """The n-gram size a field is indexed with, or None when it is not indexed (empty, or an answer too short)."""
    count = word_count(text)
    if name == "answer":
        if count < settings.answer_min_words:
            return None
        return min(settings.answer_n, count)
    return settings.question_n if count >= settings.question_n else (count if count >= 2 else None)


def _table(entries: list[tuple[np.ndarray, int, int]], max_items: int) -> dict[str, np.ndarray]:
    keys = np.concatenate([grams for grams, _, _ in entries])
    item = np.concatenate([np.full(len(grams), i, dtype=np.int32) for grams, i, _ in entries])
    fld = np.concatenate([np.full(len(grams), f, dtype=np.int8) for grams, _, f in entries])
    position = np.concatenate([np.arange(len(grams), dtype=np.int32) for grams, _, _ in entries])
    order = np.argsort(keys, kind="stable")
    keys, item, fld, position = keys[order], item[order], fld[order], position[order]
    # boilerplate n-grams: found in more than max_items distinct items
    unique_pairs = np.unique(np.stack([keys, item.astype(np.uint64)]), axis=1)
    gram, items_per_gram = np.unique(unique_pairs[0], return_counts=True)
    common = gram[items_per_gram > max_items]
    keep = ~np.isin(keys, common)
    return {"keys": keys[keep], "item": item[keep], "field": fld[keep], "position": position[keep]}


def _ranges(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each count c, concatenated."""
    ends = np.cumsum(counts)
    return np.arange(ends[-1]) - np.repeat(ends - counts, counts)


def _runs(mask: np.ndarray, doc: Words):
    """Character spans of the runs of True in a per-word mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    for first, last in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1):
        yield int(doc.starts[first]), int(doc.ends[last])
