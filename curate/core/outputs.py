"""Writing into a datatrove data folder (local or remote) so that a reader never sees half a file."""

from __future__ import annotations

import io

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
