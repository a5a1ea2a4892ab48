"""The run directory: named, persisted stages with fingerprints, and atomic writes.

A stage is finished when its record `stages/<name>.json` exists; the record is written last, after the stage's
outputs were moved into place, so an interrupted stage never looks finished. The record holds a fingerprint of
everything the stage was built from (its configuration fields and its inputs' fingerprints). Rerunning a
finished stage with the same fingerprint skips it; a different fingerprint is a `StageMismatchError`, never a
silent reuse.

`format.json` holds the layout's version (RUN_FORMAT). A folder written by a version this one cannot read is refused
before anything in it is touched, naming both versions; a folder without the file predates it and has layout 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import RunFormatError, StageMismatchError


# The run folder's layout. Raise it when a change means an older version would misread a newer folder; move
# OLDEST_RUN_FORMAT up with it when this version can no longer read (or upgrade in place) the older layout.
RUN_FORMAT = 1
OLDEST_RUN_FORMAT = 1
FORMAT_FILE = "format.json"


def fingerprint(*parts: Any) -> str:
    """A stable short hash of JSON-serialisable parts."""
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def file_digest(path: Path | str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()[:16]


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path to write a file or folder to; move it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    remove_path(tmp)
    try:
        yield tmp
        remove_path(path)
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def remove_path(path: Path | str) -> None:
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


@dataclass(frozen=True)
class Stage:
    """A stage of a run and everything it is built from (configuration fields, upstream fingerprints)."""

    name: str
    inputs: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.name, self.inputs)


class RunDirectory:
    """The folder of one run: `config.yaml`, one output per stage, and `stages/<name>.json` records."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def check_format(self) -> None:
        """Refuse a folder whose layout this version cannot read; a folder without format.json is new or has layout 1."""
        path = self.path(FORMAT_FILE)
        if not path.is_file():
            return
        try:
            found = int(json.loads(path.read_text())["format"])
        except (ValueError, KeyError, TypeError) as err:
            raise RunFormatError(f"{path} does not say which run format the folder has ({err}): restore it from the "
                                 "run's copy, or fit into a new folder") from err
        if found > RUN_FORMAT:
            raise RunFormatError(
                f"run {self.root} was written by a newer version of stride_engine (run format {found}; this version "
                f"reads formats {OLDEST_RUN_FORMAT} to {RUN_FORMAT}): upgrade curate to open it. Nothing in it was changed.")
        if found < OLDEST_RUN_FORMAT:
            raise RunFormatError(
                f"run {self.root} was written by an older version of stride_engine (run format {found}; this version "
                f"reads formats {OLDEST_RUN_FORMAT} to {RUN_FORMAT}): fit it again into a new folder, or open it with the "
                "version that wrote it. Nothing in it was changed.")

    def mark_format(self) -> None:
        """Record this version's layout (a folder that has one keeps it: check_format has accepted it)."""
        if not self.path(FORMAT_FILE).is_file():
            atomic_write_text(self.path(FORMAT_FILE), json.dumps({"format": RUN_FORMAT}) + "\n")

    def record_path(self, name: str) -> Path:
        return self.path("stages", f"{name}.json")

    def record(self, name: str) -> dict[str, Any] | None:
        path = self.record_path(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def is_done(self, stage: Stage) -> bool:
        """True when the stage finished from the same inputs; raises when it finished from other ones."""
        record = self.record(stage.name)
        if record is None:
            return False
        if record["fingerprint"] != stage.fingerprint:
            changed = _changed_keys(record.get("inputs", {}), stage.inputs)
            detail = f" (changed: {', '.join(changed)})" if changed else ""
            raise StageMismatchError(
                f"stage '{stage.name}' in {self.root} was built from a different configuration or input{detail}. "
                "Use a new run directory, or rerun with --overwrite (force=True) to rebuild it and the stages after it."
            )
        return True

    def finish(self, stage: Stage, **summary: Any) -> None:
        record = {"stage": stage.name, "fingerprint": stage.fingerprint, "inputs": stage.inputs, **summary}
        atomic_write_text(self.record_path(stage.name), json.dumps(record, indent=2, default=str))

    def invalidate(self, name: str) -> None:
        self.record_path(name).unlink(missing_ok=True)


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [key for key in keys if json.dumps(old.get(key), default=str) != json.dumps(new.get(key), default=str)]
