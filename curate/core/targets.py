"""Targets: the examples a selection (or audit) is for, turned into the engine's queries.

A target is a JSONL/Parquet file of examples (`prompt` + `completion`, or `text`) or an lm-eval task (a name
from `recipes/tasks/` or a task YAML) whose evaluation documents become the queries (`doc_to_text` as the
prompt, `doc_to_target` as the completion; a rolling-perplexity task's whole document as the text).

A text item (no prompt) longer than the model's window becomes several queries, consecutive windows of it named
`<id>#0`, `<id>#1`, ..., so that the target's queries cover all of its text, as the proxies' rolling perplexity
does (and as the training corpus is chunked). A prompt-completion item longer than the window is cut to it (the
prompt loses its beginning first, then the completion its end). Both are counted. An item the tokenizer cannot
encode (no token, or only unknown tokens) is an error that names it.

A target may be made of parts: benchmark subtasks, or the sources of a mixed target. In a file, each item names its
part in a `part` field (all items do, or none); a task group's parts are its tasks. A window belongs to its item's
part. Balanced allocation (curate/budget.py) gives each part an equal share of a selection's budget. Another field
can name the part (`part_field`, e.g. a benchmark's `subject`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from stride_engine import Queries, StrideError, read_queries
from stride_engine.config import stage_fields
from stride_engine.corpus import JSONL_SUFFIXES, PARQUET_SUFFIXES, iter_records

from ..errors import CurateError
from .run import Run


@dataclass(frozen=True)
class Target:
    name: str  # the query set's name inside the run
    source: str  # what the user gave
    queries: Queries  # one per item, or per window of an item (`<id>#<n>`)
    items: int
    truncated: int  # prompt-completion items cut to the model's window
    windowed: int  # text items split into several windows (queries)
    parts: tuple[str, ...] = ()  # each query's part of the target; empty when the target is one whole

    def part_queries(self) -> dict[str, Queries]:
        """The queries of each part, in the order the parts first occur (one part, the target's name, without parts)."""
        labels = self.parts or (self.name,) * len(self.queries)
        grouped: dict[str, list[int]] = {}
        for index, label in enumerate(labels):
            grouped.setdefault(label, []).append(index)
        q = self.queries
        return {label: Queries([q.ids[i] for i in rows], [q.prompts[i] for i in rows], [q.completions[i] for i in rows])
                for label, rows in grouped.items()}


def load_target(
    spec: str | Path, tokenizer, max_length: int, task_dirs: list[Path] | None = None, limit: int | None = None,
    part_field: str = "part",
) -> Target:
    text = str(spec)
    if text.lower().endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES):
        if not Path(text).is_file():
            raise CurateError(f"target file {text} does not exist")
        try:
            queries = read_queries(Path(text))
            parts = _file_parts(Path(text), part_field)
        except StrideError as err:
            raise CurateError(f"target {text}: {err}") from err
        name = Path(text).name.split(".")[0]
    else:
        from ..proxy.evaluate import task_items  # lm-eval is imported only for task targets

        queries, parts = task_items(text, task_dirs or [], limit=limit)
        name = Path(text).stem if text.lower().endswith((".yaml", ".yml")) else text
    if limit is not None:
        queries = Queries(queries.ids[:limit], queries.prompts[:limit], queries.completions[:limit])
        parts = parts[:limit]
    if len(queries) == 0:
        raise CurateError(f"target {text} has no items")
    fitted, truncated, windowed = fit_to_window(queries, tokenizer, max_length)
    if parts:
        part_of = dict(zip(queries.ids, parts))
        parts = [part_of[query_id] if query_id in part_of else part_of[query_id.rsplit("#", 1)[0]] for query_id in fitted.ids]
    name = _safe(name)
    target_name = name if name.startswith("target") else f"target-{name}"
    return Target(target_name, text, fitted, len(queries), truncated, windowed, tuple(parts))


def _file_parts(path: Path, field: str) -> list[str]:
    """Each record's part (its `field`), or [] when no record names one; a file where only some do is an error."""
    parts, missing = [], None
    for line_no, record in iter_records(path):
        value = record.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            missing = missing or line_no
        else:
            parts.append(str(value))
    if parts and missing is not None:
        raise CurateError(
            f"target {path}, record {missing}: no `{field}`, where other items name their part; give every item its "
            "part (a subtask or source name) or none"
        )
    return parts


LONG_TEXT = ("window", "cut")  # what becomes of a text item longer than the model's window


def fit_to_window(queries: Queries, tokenizer, max_length: int, long_text: str = "window") -> tuple[Queries, int, int]:
    """Fit items to `max_length` tokens (bos included): long text items become windows, long prompt-completion items
    are cut. With `long_text="cut"`, a long text item is cut to its opening window instead of split. Returns the
    queries, how many items were cut and how many were split; refuses items the tokenizer cannot represent."""
    if long_text not in LONG_TEXT:
        raise CurateError(f"long_text {long_text!r} is not one of {list(LONG_TEXT)}")
    unknown = tokenizer.unk_token_id
    budget = max_length - (1 if tokenizer.bos_token_id is not None else 0)
    room = budget - 4  # decoded text re-encodes to about as many tokens, sometimes a few more
    ids, prompts, completions, truncated, windowed = [], [], [], 0, 0

    def keep(query_id: str, prompt: str, completion: str) -> None:
        ids.append(query_id)
        prompts.append(prompt)
        completions.append(completion)

    for query_id, prompt, completion in zip(queries.ids, queries.prompts, queries.completions):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if not completion_ids or (unknown is not None and all(t == unknown for t in completion_ids)):
            raise CurateError(
                f"target item {query_id!r}: the tokenizer cannot encode its text ({completion[:60]!r} gives "
                f"{'no token' if not completion_ids else 'only unknown tokens'}); remove it or use the model's language"
            )
        if len(prompt_ids) + len(completion_ids) <= budget:
            keep(query_id, prompt, completion)
        elif not prompt_ids and long_text == "cut":
            truncated += 1
            keep(query_id, "", tokenizer.decode(completion_ids[:room]))
        elif not prompt_ids:
            windowed += 1
            count = -(-len(completion_ids) // room)
            bounds = [round(i * len(completion_ids) / count) for i in range(count + 1)]  # equal windows: none is tiny
            for number, (start, stop) in enumerate(zip(bounds, bounds[1:])):
                keep(f"{query_id}#{number}", "", tokenizer.decode(completion_ids[start:stop]))
        else:
            truncated += 1
            keep_completion = min(len(completion_ids), room - min(len(prompt_ids), room // 2))
            completion_ids = completion_ids[:keep_completion]
            prompt_ids = prompt_ids[len(prompt_ids) - (room - keep_completion):] if room > keep_completion else []
            keep(query_id, tokenizer.decode(prompt_ids), tokenizer.decode(completion_ids))
    return Queries(ids, prompts, completions), truncated, windowed


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name) or "target"


# ------------------------------------------------------------------------------------------ a target in a run


def target_for_run(run: Run, spec: str | Path, task_dirs: list[Path] | None = None, limit: int | None = None,
                   part_field: str = "part") -> Target:
    """The target fitted to the run's model window, named for its queries and the run's recovery settings."""
    target = load_target(spec, run.tokenizer, run.window, task_dirs, limit, part_field)
    recovery = stage_fields(run.config, "scores")
    digest = hashlib.sha1(json.dumps([target.queries.ids, target.queries.prompts, target.queries.completions, recovery]).encode())
    # The digest in the name: a target file edited since an earlier selection, or a run rescored with other recovery
    # settings since (`curate fit ... --set groups=16 --overwrite`), gets its own score store instead of a stale one.
    return dataclasses.replace(target, name=f"{target.name}-{digest.hexdigest()[:8]}")


def part_sets(target: Target) -> dict[str, tuple[str, Queries]]:
    """Each part's query set in the run: its name and queries. A one-part target's is the target's own; a part's
    name holds the target's (its queries' digest), the part's, and a digest of which queries the part holds, so
    items moved to another part get new stores."""
    parts = target.part_queries()
    if len(parts) == 1:
        return {label: (target.name, queries) for label, queries in parts.items()}
    sets = {}
    for label, queries in parts.items():
        digest = hashlib.sha1(json.dumps([label, queries.ids]).encode()).hexdigest()[:6]
        sets[label] = (f"{target.name}-part-{_safe(label)[:40]}-{digest}", queries)
    return sets


@dataclass(frozen=True)
class TargetQuerySets:
    """The query sets a job attributes for a target, as a picklable description (the attribution stage's input): the
    whole target's, or with `by_part` each part's (part_sets). Loaded in the worker, for the run it opens there."""

    spec: str
    task_dirs: tuple[str, ...] = ()
    limit: int | None = None
    part_field: str = "part"
    by_part: bool = False

    def sets(self, run: Run) -> dict[str, Queries]:
        target = target_for_run(run, self.spec, [Path(d) for d in self.task_dirs], self.limit, self.part_field)
        if self.by_part:
            return dict(part_sets(target).values())
        return {target.name: target.queries}
