"""Writing outputs: into a datatrove data folder so that a reader never sees half a file, and the rerun check of
saved settings."""

from __future__ import annotations

import io
import json
from typing import Any

import polars as pl


def write_atomically(folder, name: str, data: bytes) -> None:
    """Through a temporary name and a rename where the filesystem allows."""
    partial = f"{name}.partial"
    with folder.open(partial, "wb") as handle:
        handle.write(data)
    folder.mv(partial, name)


def write_parquet(frame: pl.DataFrame, folder, name: str) -> None:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    write_atomically(folder, name, buffer.getvalue())


def read_parquet(folder, name: str) -> pl.DataFrame:
    with folder.open(name, "rb") as handle:
        return pl.read_parquet(io.BytesIO(handle.read()))


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys whose values differ between what an output was made with and what is asked now (as JSON reads them)."""
    saved, now = json.loads(json.dumps(saved, default=str)), json.loads(json.dumps(now, default=str))
    return sorted(key for key in {*saved, *now} if saved.get(key) != now.get(key))
