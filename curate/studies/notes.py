"""Hand-written notes in a generated results file (benchmarks/results/*.md), kept when the file is regenerated.

The notes are one block of Markdown between the lines

    <!-- notes: hand-written, kept when this file is regenerated -->
    <!-- /notes -->

A generator writes `keep_notes(path, text, commit)` instead of `text`: the new text, with the notes block of the
file now at `path` placed before the new text's first `## ` heading (at its end when it has none). Everything
outside the block is the generator's and is replaced. A stamp from a tree with uncommitted changes (a commit that
ends with "-dirty") gets the paragraph `DIRTY` after the "Made by" paragraph.
"""

from __future__ import annotations

from pathlib import Path

NOTES_START = "<!-- notes: hand-written, kept when this file is regenerated -->"
NOTES_END = "<!-- /notes -->"
DIRTY = ("The results were made from a tree with uncommitted changes (the `-dirty` in the stamp); rerun the command "
         "above from a clean checkout to regenerate them.")


def keep_notes(path: Path, generated: str, commit: str | None = None) -> str:
    """The text to write to `path`: `generated` with the notes block of the file now at `path` carried over.

    When `commit` ends with "-dirty", the paragraph `DIRTY` follows the first paragraph that starts with "Made by"
    (or precedes the first `## ` heading when there is none), unless the text or the notes already hold it.
    A missing file, or one without notes, keeps nothing. Unbalanced markers raise ValueError rather than lose notes.
    """
    path = Path(path)
    notes = _notes(path.read_text().split("\n")) if path.is_file() else []
    dirty = bool(commit and commit.endswith("-dirty")) and not _holds(DIRTY, [generated, "\n".join(notes)])
    if not notes and not dirty:
        return generated
    lines = (generated[:-1] if generated.endswith("\n") else generated).split("\n") if generated else []
    if dirty:
        lines = _after_stamp(lines, DIRTY)
    if notes:
        lines = _insert(lines, _first_section(lines), notes)
    return "\n".join(lines) + "\n"


def _notes(lines: list[str]) -> list[str]:
    """The lines of every notes block, markers included (several blocks are joined, a blank line between them)."""
    kept, start = [], None
    for i, line in enumerate(lines):
        if line.strip() == NOTES_START:
            if start is not None:
                raise ValueError(f"a notes block opened at line {start + 1} is opened again at line {i + 1}")
            start = i
        elif line.strip() == NOTES_END:
            if start is None:
                raise ValueError(f"{NOTES_END!r} at line {i + 1} closes no notes block")
            kept += ([""] if kept else []) + lines[start:i + 1]
            start = None
    if start is not None:
        raise ValueError(f"the notes block opened at line {start + 1} is never closed with {NOTES_END!r}")
    return kept


def _holds(paragraph: str, texts: list[str]) -> bool:
    """Whether one of `texts` holds `paragraph`, however its words are wrapped."""
    words = " ".join(paragraph.split())
    return any(words in " ".join(text.split()) for text in texts)


def _first_section(lines: list[str]) -> int:
    return next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))


def _insert(lines: list[str], at: int, block: list[str]) -> list[str]:
    """`block` inserted before line `at` as paragraphs of its own: a blank line on each side unless one is there."""
    before, after = lines[:at], lines[at:]
    return (before + ([""] if before and before[-1].strip() else []) + block
            + ([""] if after and after[0].strip() else []) + after)


def _after_stamp(lines: list[str], paragraph: str) -> list[str]:
    """`paragraph` after the first paragraph that starts with "Made by" (before the first `## ` without one)."""
    stamp = next((i for i, line in enumerate(lines) if line.startswith("Made by") and (i == 0 or not lines[i - 1].strip())), None)
    if stamp is None:
        return _insert(lines, _first_section(lines), [paragraph])
    end = next((i for i in range(stamp, len(lines)) if not lines[i].strip()), len(lines))
    return _insert(lines, end, [paragraph])
