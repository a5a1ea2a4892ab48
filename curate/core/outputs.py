"""Writing outputs: into a datatrove data folder so that a reader never sees half a file, the rerun check of saved
settings, and replacing an output folder only once its replacement is complete."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
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


@contextmanager
def replacing(*folders: Path | str | None):
    """`--overwrite` for a folder a job writes: the old one is moved aside (`<name>.replaced`) while the new one is
    made, restored if making it fails, and removed once the job finished and wrote `manifest.json` into the first
    folder. A job that only submits (Slurm) leaves the old one aside, under that name, for the user to remove."""
    moved: list[tuple[Path, Path]] = []
    for folder in (Path(f) for f in folders if f is not None):
        if folder.exists():
            aside = folder.with_name(folder.name + ".replaced")
            if aside.exists():
                shutil.rmtree(aside)
            folder.rename(aside)
            moved.append((folder, aside))
    try:
        yield
    except BaseException:
        for folder, aside in moved:
            if folder.exists():
                shutil.rmtree(folder)
            aside.rename(folder)
        raise
    first = next((Path(f) for f in folders if f is not None), None)
    if first is not None and (first / "manifest.json").is_file():
        for _, aside in moved:
            shutil.rmtree(aside)
