"""datatrove readers of a run's pool that name documents as the engine does, so every step finds them in the run.

The engine names a document by its id field as text (`7` and `"7"` are the same document) or, without one, by
`<file stem>:<line>` (1-based, as `stride_engine.read_documents` counts); datatrove's own readers keep the raw id
and fall back to `<path>/<index>`. A selection's steps match documents to the run's scores by id, so they read
the pool through these readers.
"""

from __future__ import annotations

from pathlib import Path

from datatrove.pipeline.readers import JsonlReader, ParquetReader

from stride_engine.corpus import PARQUET_SUFFIXES


class _EngineIds:
    def _default_adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:
        raw = data.get(self.id_key)
        record = super()._default_adapter(data, path, id_in_file)
        # datatrove counts a JSONL file's lines from 0 (blank ones included), as the engine does from 1. Its Parquet
        # reader skips empty-text rows in its count, which the engine does not: give Parquet pools an id field.
        record["id"] = str(raw) if raw is not None else f"{Path(path).stem}:{int(id_in_file) + 1}"
        return record


class PoolJsonlReader(_EngineIds, JsonlReader):
    name = "🐿 Jsonl (engine ids)"


class PoolParquetReader(_EngineIds, ParquetReader):
    name = "📒 Parquet (engine ids)"


def pool_readers(files: list[Path], text_field: str, id_field: str) -> list:
    """One reader per training file of a run (readers chain: each passes on what came before)."""
    readers = []
    for path in map(Path, files):
        options = dict(data_folder=str(path.parent), glob_pattern=path.name, text_key=text_field, id_key=id_field, recursive=False)
        if path.name.lower().endswith(PARQUET_SUFFIXES):
            readers.append(PoolParquetReader(**options, add_file_path=False))
        else:
            readers.append(PoolJsonlReader(**options, compression="infer", add_file_path=False))
    return readers
