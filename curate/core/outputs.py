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

from ..errors import CurateError


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


def finished_rerun(out: Path | str, saved: Path | str, fingerprint: dict[str, Any], overwrite: bool, noun: str,
                   replaceable_without_saved: bool = False) -> bool:
    """The house's rerun rule for a job's output folder: True when `out` holds a finished output (a manifest.json) made
    with these very settings (`saved` holds what it was made with). An output of other settings is refused, naming
    the changed keys, unless `overwrite`; a folder that is not such an output is never touched (except, with
    `replaceable_without_saved`, a finished one from before settings were saved, which `overwrite` may replace)."""
    out, saved = Path(out), Path(saved)
    if not out.exists() or not any(out.iterdir()):
        return False
    article = "an" if noun[0] in "aeiou" else "a"
    if not saved.is_file():
        if overwrite and replaceable_without_saved and (out / "manifest.json").is_file():
            return False
        raise CurateError(f"{out} holds files that are not a curate {noun} (no {saved.relative_to(out)}); choose another folder")
    if overwrite:
        return False
    changed = changed_settings(json.loads(saved.read_text()), fingerprint)
    if changed:
        raise CurateError(
            f"{out} holds {article} {noun} made with other settings (changed: {', '.join(changed)}; see {saved}); "
            "pass --overwrite to replace it, or choose another folder"
        )
    return (out / "manifest.json").is_file()


def check_data_folder(data: Path | str, out: Path | str, saved: Path | str, finished: bool, overwrite: bool, what: str,
                      option: str) -> None:
    """A dataset a job writes beside its output folder (a clean copy, a resampled mixture): its own folder, and not a
    non-empty one this job did not start (a rerun of the same job, or `overwrite`, may find it filled)."""
    data, out = Path(data), Path(out)
    if data.resolve() == out.resolve():
        raise CurateError(f"the {what} ({option}) needs its own folder, not the output folder's")
    if data.exists() and any(data.iterdir()) and not finished and not overwrite and not Path(saved).is_file():
        raise CurateError(f"{data} is not empty: choose another folder for the {what}")
