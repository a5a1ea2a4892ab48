"""A contamination audit as datatrove steps: index (one task) -> scan (many tasks) -> report (one task) -> clean copy.

    stage 1  [ContaminationIndex(items, WORK)]                       one task:  the benchmark's n-gram index
    stage 2  [reader, ContaminationScorer(WORK)]                     many tasks: per-task shards of the evidence
    stage 3  [AuditReport(WORK, AUDIT, request)]                     one task:  verdicts, tables, report, manifest
    stage 4  [reader, ContaminationFilter(AUDIT, remove), writer]    many tasks: the decontaminated corpus (optional)

chained with `depends=` (curate.contamination.pipeline). The scan streams the corpus: a task holds the index
(which grows with the benchmark) and one document at a time. Steps hold only paths and settings until `run()`, so
they pickle for Slurm and Ray.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from ..core.outputs import read_parquet, write_atomically, write_parquet
from ..errors import CurateError
from .fuzzy import FuzzyIndex, FuzzySettings
from .items import BenchmarkItem
from .lexical import LexicalIndex, LexicalSettings, word_count

ITEMS_FILE = "items.parquet"  # in WORK: the benchmark items, in the order the index numbers them
INDEX_FILE = "lexical.npz"
FUZZY_FILE = "fuzzy.pkl"  # the MinHash-LSH index of the questions (absent when the fuzzy signal is off)
MATCHES = "matches"  # WORK/matches/<rank>.parquet
DOCUMENTS_FILE = "documents.parquet"  # in AUDIT: flagged (item, document) pairs

MOSTLY_ITEM = 0.1

SPAN = pl.Struct({"start": pl.Int64, "end": pl.Int64, "field": pl.String})
MATCH_SCHEMA = {
    "doc_id": pl.String, "item": pl.Int64, "question_coverage": pl.Float64, "answer_coverage": pl.Float64,
    "context_coverage": pl.Float64, "fuzzy_similarity": pl.Float64, "number_recall": pl.Float64, "spans": pl.List(SPAN),
    "text": pl.String,
}


def items_frame(items: list[BenchmarkItem]) -> pl.DataFrame:
    return pl.DataFrame(
        {"benchmark": [i.benchmark for i in items], "item_id": [i.id for i in items], "question": [i.question for i in items],
         "answer": [i.answer for i in items], "context": [i.context for i in items]},
        schema={"benchmark": pl.String, "item_id": pl.String, "question": pl.String, "answer": pl.String, "context": pl.String},
    )


def frame_items(frame: pl.DataFrame) -> list[BenchmarkItem]:
    return [BenchmarkItem(r["benchmark"], r["item_id"], r["question"], r["answer"], r["context"]) for r in frame.iter_rows(named=True)]


class ContaminationIndex(PipelineStep):
    """One task: writes the benchmark items and their n-gram index into the work folder."""

    name = "🧪 Contamination index"
    type = "📊 STATS"

    def __init__(self, items: list[BenchmarkItem], work_folder: DataFolderLike, settings: LexicalSettings = LexicalSettings(),
                 fuzzy: FuzzySettings | None = FuzzySettings()):
        super().__init__()
        settings.check()  # bad settings fail when the pipeline is built, before any stage runs
        if fuzzy is not None:
            fuzzy.check()
        self.items, self.settings, self.fuzzy = list(items), settings, fuzzy
        self.work_folder = get_datafolder(work_folder)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != 1:
            raise CurateError(f"ContaminationIndex builds one index: run it as a single task (got {world_size} tasks)")
        index = LexicalIndex.build(self.items, self.settings)
        write_parquet(items_frame(self.items), self.work_folder, ITEMS_FILE)
        write_atomically(self.work_folder, INDEX_FILE, _index_bytes(index))
        if self.fuzzy is not None:
            write_atomically(self.work_folder, FUZZY_FILE, pickle.dumps(FuzzyIndex.build(self.items, self.fuzzy)))
        self.stat_update("items", value=len(self.items))
        self.stat_update("ngrams", value=sum(len(t["keys"]) for t in index.tables.values()))
        yield from data or []


class ContaminationScorer(PipelineStep):
    """Annotates each document with the benchmark items it overlaps (`metadata["contamination"]`: item keys whose
    exact coverage or fuzzy similarity reaches `evidence_floor`) and writes that evidence, spans and document text
    included, as one shard per task."""

    name = "🧪 Contamination scorer"
    type = "✨ ANNOTATOR"

    def __init__(self, work_folder: DataFolderLike, evidence_floor: float = 0.2):
        super().__init__()
        self.work_folder = get_datafolder(work_folder)
        self.evidence_floor = evidence_floor  # below it, a shared phrase: not kept (it would only grow the shards)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        index, fuzzy, keys = self._load()
        rows: list[dict[str, Any]] = []
        for doc in data or []:
            with self.track_time():
                found = self._evidence(doc.text, index, fuzzy)
                doc.metadata["contamination"] = [keys[item] for item in found]
                rows.extend({"doc_id": doc.id, "item": item, **row, "text": doc.text} for item, row in found.items())
            self.stat_update("with_evidence" if found else "without_evidence")
            yield doc
        write_parquet(pl.DataFrame(rows, schema=MATCH_SCHEMA), self.work_folder, f"{MATCHES}/{rank:05d}.parquet")

    def _evidence(self, text: str, index: LexicalIndex, fuzzy: FuzzyIndex | None) -> dict[int, dict[str, Any]]:
        """Per item with evidence in the text: coverage per field, fuzzy similarity and number recall, spans."""
        found: dict[int, dict[str, Any]] = {}
        for m in index.match(text):
            if max(m.question_coverage, m.answer_coverage) >= self.evidence_floor:
                found[m.item] = {"question_coverage": m.question_coverage, "answer_coverage": m.answer_coverage,
                                 "context_coverage": m.context_coverage, "fuzzy_similarity": None, "number_recall": None,
                                 "spans": [{"start": s, "end": e, "field": f} for s, e, f in m.spans]}
        for m in fuzzy.match(text) if fuzzy is not None else []:
            if m.similarity < max(self.evidence_floor, 0.5 * fuzzy.settings.similarity):
                continue
            row = found.setdefault(m.item, {"question_coverage": 0.0, "answer_coverage": 0.0, "context_coverage": 0.0, "spans": []})
            row.update(fuzzy_similarity=m.similarity, number_recall=m.number_recall)
            if fuzzy.fires(m):
                row["spans"] = [*row["spans"], {"start": m.span[0], "end": m.span[1], "field": "fuzzy"}]
        return found

    def _load(self) -> tuple[LexicalIndex, FuzzyIndex | None, list[str]]:
        for name in (ITEMS_FILE, INDEX_FILE):
            if not self.work_folder.isfile(name):
                raise CurateError(f"no {name} in {self.work_folder.path}: run the ContaminationIndex stage first")
        items = read_parquet(self.work_folder, ITEMS_FILE)
        keys = [f"{b}/{i}" for b, i in items.select("benchmark", "item_id").iter_rows()]
        with self.work_folder.open(INDEX_FILE, "rb") as handle:
            index = _index_from_bytes(handle.read())
        fuzzy = None
        if self.work_folder.isfile(FUZZY_FILE):
            with self.work_folder.open(FUZZY_FILE, "rb") as handle:
                fuzzy = pickle.loads(handle.read())  # written by this audit's own index stage
        return index, fuzzy, keys


class ContaminationFilter(BaseFilter):
    """Drops the flagged documents (`remove="documents"`) or cuts their matched spans out (`remove="spans"`); what is
    dropped goes to the exclusion writer with a reason naming the benchmark and the item. A document that keeps less
    than a tenth of its words once the spans are cut was the item (with a label or two): it is dropped whole."""

    name = "🧪 Contamination filter"

    def __init__(self, audit_folder: DataFolderLike, remove: str = "documents", exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        if remove not in ("documents", "spans"):
            raise CurateError(f"remove must be 'documents' or 'spans', got {remove!r}")
        self.audit_folder = get_datafolder(audit_folder)
        self.remove = remove
        self._flags: dict[str, tuple[list[str], list[tuple[int, int]]]] | None = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._flags is None:
            self._flags = self._load()
        if doc.id not in self._flags:
            return True
        items, spans = self._flags[doc.id]
        reason = "contamination: " + ", ".join(items)
        if self.remove == "documents":
            doc.metadata["exclusion_reason"] = reason
            return False, "contaminated"
        remaining = cut_spans(doc.text, spans)
        if word_count(remaining) < MOSTLY_ITEM * word_count(doc.text):
            doc.metadata["exclusion_reason"] = reason  # what is left is the item's labels and punctuation: drop it whole
            return False, "contaminated"
        doc.metadata["contamination_removed"] = reason
        doc.text = remaining
        return True

    def _load(self) -> dict[str, tuple[list[str], list[tuple[int, int]]]]:
        if not self.audit_folder.isfile(DOCUMENTS_FILE):
            raise CurateError(f"no {DOCUMENTS_FILE} in {self.audit_folder.path}: run the audit (its report stage) first")
        table = read_parquet(self.audit_folder, DOCUMENTS_FILE)
        flags: dict[str, tuple[list[str], list[tuple[int, int]]]] = {}
        for row in table.select("doc_id", "benchmark", "item_id", "spans").iter_rows(named=True):
            items, spans = flags.setdefault(row["doc_id"], ([], []))
            items.append(f"{row['benchmark']}/{row['item_id']}")
            spans.extend((s["start"], s["end"]) for s in row["spans"] or [])
        return flags


def cut_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """The text without the given character spans (overlapping ones merged)."""
    kept, cursor = [], 0
    for start, end in sorted(spans):
        if start > cursor:
            kept.append(text[cursor:start])
        cursor = max(cursor, end)
    kept.append(text[cursor:])
    return "".join(kept)


def _index_bytes(index: LexicalIndex) -> bytes:
    arrays = {"field_words": index.field_words, "settings": np.array(json.dumps(index.settings.__dict__))}
    for n, table in index.tables.items():
        arrays.update({f"{n}/{name}": values for name, values in table.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _index_from_bytes(data: bytes) -> LexicalIndex:
    with np.load(io.BytesIO(data)) as arrays:
        tables: dict[int, dict[str, np.ndarray]] = {}
        for name in arrays.files:
            if "/" in name:
                n, column = name.split("/")
                tables.setdefault(int(n), {})[column] = arrays[name]
        settings = LexicalSettings(**json.loads(str(arrays["settings"])))
        return LexicalIndex(settings, arrays["field_words"], tables)


def read_matches(work_folder) -> pl.DataFrame:
    folder = get_datafolder(work_folder)
    shards = sorted(folder.list_files(subdirectory=MATCHES, glob_pattern="*.parquet"))
    if not shards:
        raise CurateError(f"no evidence shards in {Path(folder.path) / MATCHES}: run the ContaminationScorer stage first")
    return pl.concat([read_parquet(folder, name) for name in shards])
