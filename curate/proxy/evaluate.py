"""lm-eval checks: evaluate local models on offline task YAMLs and compare them with a reference.

Tasks come from curate's own ``recipes/tasks/`` plus any task folder or YAML file the user gives (later
sources override earlier ones of the same name). lm-eval resolves a task's relative ``dataset_kwargs.data_files``
against the *current working directory*, not the YAML's folder, so the tasks of a run are first *prepared*:
each requested task's YAML is flattened (its ``include`` chain merged in, as lm-eval merges it) with every
relative path made absolute against the folder of the YAML that wrote it, and saved under ``OUT/tasks/``. That
folder is the TaskManager's include path; it also records exactly what was evaluated.

``evaluate_models`` runs ``lm_eval.simple_evaluate`` (the ``hf`` model, float32, on the device asked for) for every model, then
writes ``results.json`` (raw lm-eval results per model), ``results.parquet`` (tidy: model, task, metric, value,
stderr, higher_is_better, samples), ``report.md`` (tasks x models, the first model is the reference, with the
change of every other model against it) and ``report.png`` (the main metric of every task per model).
``target_task`` writes a rolling-perplexity task for any JSONL/Parquet file (``curate eval --target``);
``task_examples`` turns a task's documents into prompt/completion queries (a selection target given as a task).
"""

from __future__ import annotations

import glob
import gzip
import json
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from ..errors import CurateError
from stride_engine.artifacts import atomic_path

__all__ = [
    "TASKS_DIR", "available_tasks", "evaluate_models", "prepare_tasks", "results_table", "target_task", "task_examples", "task_items",
    "write_report",
]

TASKS_DIR = Path(__file__).resolve().parents[2] / "recipes" / "tasks"  # the repository's offline task YAMLs
PPL_TEMPLATE = TASKS_DIR / "_default_ppl_template_yaml"

# What the report shows per lm-eval output type: the first metric is the task's main metric (the plot's).
REPORT_METRICS: dict[str, tuple[str, ...]] = {
    "loglikelihood_rolling": ("word_perplexity", "byte_perplexity"),
    "multiple_choice": ("acc",),
    "loglikelihood": ("perplexity", "acc"),
    "generate_until": ("exact_match",),
}
# Loaders by file name ending, for ad-hoc targets (the `datasets` builder that reads them).
TARGET_BUILDERS: dict[str, str] = {".jsonl": "json", ".jsonl.gz": "json", ".json": "json", ".parquet": "parquet"}
TASK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


# ------------------------------------------------------------------------------------------------ task YAMLs


class FunctionRef(str):
    """An lm-eval `!function module.name` value, kept as text so a rewritten YAML still carries the tag."""


class _TaskLoader(yaml.SafeLoader):
    pass


class _TaskDumper(yaml.SafeDumper):
    pass


_TaskLoader.add_constructor("!function", lambda loader, node: FunctionRef(loader.construct_scalar(node)))
_TaskDumper.add_representer(FunctionRef, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def _is_local(path: str) -> bool:
    return "://" not in path


def _absolute(value: Any, folder: Path) -> Any:
    """`value` (a path string, or a list/dict of them) with relative local paths resolved against `folder`."""
    if isinstance(value, str):
        return str((folder / value).resolve()) if _is_local(value) and not Path(value).is_absolute() else value
    if isinstance(value, list):
        return [_absolute(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, folder) for k, v in value.items()}
    return value


def _absolutise(config: dict, folder: Path) -> dict:
    """A copy of one YAML's config with the paths lm-eval would read relative to the working directory made
    absolute against the YAML's own folder: includes, data files, a data folder, an explicitly relative
    `dataset_path` (`./x`, `../x`; a bare name such as `json` is a `datasets` builder, not a path)."""
    config = dict(config)
    if "include" in config:
        config["include"] = _absolute(config["include"], folder)
    kwargs = config.get("dataset_kwargs")
    if isinstance(kwargs, dict):
        kwargs = dict(kwargs)
        for key in ("data_files", "data_dir"):
            if key in kwargs:
                kwargs[key] = _absolute(kwargs[key], folder)
        config["dataset_kwargs"] = kwargs
    path = config.get("dataset_path")
    if isinstance(path, str) and path.startswith("."):
        config["dataset_path"] = _absolute(path, folder)
    if isinstance(config.get("task"), list):  # a group's inline task configs
        config["task"] = [_absolutise(t, folder) if isinstance(t, dict) else t for t in config["task"]]
    return config


def _load_flat(path: Path, seen: frozenset[Path] = frozenset()) -> dict:
    """One task YAML with its `include` chain merged in (lm-eval's rule: included keys first, local keys win,
    an included file's `task_list` is not inherited) and every relative path made absolute."""
    path = path.resolve()
    if path in seen:
        raise CurateError(f"task YAML include cycle at {path}")
    with open(path, encoding="utf-8") as handle:
        config = yaml.load(handle, Loader=_TaskLoader)  # a SafeLoader that keeps `!function` tags as text
    if not isinstance(config, dict):
        raise CurateError(f"{path} is not a task YAML (expected a mapping)")
    config = _absolutise(config, path.parent)
    includes = config.pop("include", None)
    if includes is None:
        return config
    merged: dict = {}
    for include in includes if isinstance(includes, list) else [includes]:
        if not Path(include).is_file():
            raise CurateError(f"{path} includes {include}, which does not exist")
        included = _load_flat(Path(include), seen | {path})
        included.pop("task_list", None)
        merged.update(included)
    return merged | config


@dataclass(frozen=True)
class TaskEntry:
    """One name lm-eval can be asked for: a task, a group (its members) or a tag (the tasks carrying it)."""

    name: str
    kind: str  # "task" | "group" | "tag"
    source: Path | None  # the YAML it came from (None for a tag)
    config: dict | None  # flattened, absolute paths (None for a tag)
    members: tuple[str, ...] = ()


def _yaml_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        return sorted(p for p in source.rglob("*.yaml") if "__pycache__" not in p.parts)
    raise CurateError(f"task folder or YAML not found: {source}")


def _catalogue(task_dirs: Sequence[Path] = ()) -> tuple[dict[str, TaskEntry], list[str]]:
    """Every task, group and tag of curate's tasks and the user's (later sources win), and the YAML files that
    could not be read (lm-eval itself skips those silently; a request for their task should say why)."""
    entries: dict[str, TaskEntry] = {}
    problems: list[str] = []
    for source in [TASKS_DIR, *map(Path, task_dirs)]:
        for path in _yaml_files(source):
            try:
                config = _load_flat(path)
            except (CurateError, yaml.YAMLError, OSError) as err:
                problems.append(f"{path}: {str(err).splitlines()[0]}")
                continue
            if "group" in config:
                names = [t if isinstance(t, str) else t.get("task", "") for t in config.get("task") or []]
                entries[config["group"]] = TaskEntry(config["group"], "group", path, config, tuple(names))
            elif isinstance(config.get("task"), str):
                entries[config["task"]] = TaskEntry(config["task"], "task", path, config)
                tags = config.get("tag") or []
                for tag in [tags] if isinstance(tags, str) else tags:
                    members = entries[tag].members if tag in entries else ()
                    entries[tag] = TaskEntry(tag, "tag", None, None, (*members, config["task"]))
            # anything else (a template without `task`) is only ever included
    return entries, problems


def available_tasks(task_dirs: Sequence[Path] = ()) -> list[str]:
    """The task, group and tag names `evaluate_models` can run with these extra task folders/files."""
    return sorted(_catalogue(task_dirs)[0])


def _expand(names: Sequence[str], entries: dict[str, TaskEntry], problems: list[str]) -> list[TaskEntry]:
    """The entries a request needs (groups and tags with all their members), unknown names refused."""
    unknown = [n for n in names if n not in entries]
    if unknown:
        hint = f"; unreadable task YAMLs: {'; '.join(problems)}" if problems else ""
        raise CurateError(
            f"unknown task {', '.join(map(repr, unknown))}; available tasks: {', '.join(sorted(entries))}"
            f" (add a task folder or YAML with --task-dir){hint}"
        )
    needed: dict[str, TaskEntry] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in needed or name not in entries:  # an inline group member has no entry of its own
            continue
        needed[name] = entries[name]
        pending += entries[name].members
    return list(needed.values())


def _missing_data(config: dict) -> list[str]:
    """Local data files of a task config (and of a group's inline tasks) that do not exist."""
    missing = []
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    values = files.values() if isinstance(files, dict) else [files] if files else []
    for value in values:
        for path in value if isinstance(value, list) else [value]:
            if isinstance(path, str) and _is_local(path) and not glob.glob(path):
                missing.append(path)
    for inline in config.get("task") if isinstance(config.get("task"), list) else []:
        if isinstance(inline, dict):
            missing += _missing_data(inline)
    return missing


def _resolve(tasks: Sequence[str], task_dirs: Sequence[Path]) -> list[TaskEntry]:
    """Check a task request (names known, data files present) without writing anything."""
    entries, problems = _catalogue(task_dirs)
    needed = _expand(tasks, entries, problems)
    for entry in needed:
        missing = _missing_data(entry.config) if entry.config else []
        if missing:
            raise CurateError(
                f"task {entry.name!r} ({entry.source}) reads {missing[0]}, which does not exist"
                + (" (the project's shared data, ../shared/data, is not here)" if "shared/data" in missing[0] else "")
            )
    return needed


def prepare_tasks(tasks: Sequence[str], folder: Path, task_dirs: Sequence[Path] = ()) -> Path:
    """Write the requested tasks (groups with their members), flattened with absolute paths, one sub-folder per
    task under `folder` (with the Python files of the task's own folder when it uses `!function`). Returns
    `folder`, the include path for `lm_eval.tasks.TaskManager`. Unknown tasks and missing data files raise
    CurateError before anything is written."""
    needed = _resolve(tasks, task_dirs)
    folder = Path(folder)
    for entry in needed:
        if entry.config is None:  # a tag: its tasks carry it
            continue
        task_folder = folder / entry.name
        task_folder.mkdir(parents=True, exist_ok=True)
        config = {k: entry.config[k] for k in ("group", "task") if k in entry.config} | entry.config  # name first
        text = yaml.dump(config, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True)
        (task_folder / f"{entry.name}.yaml").write_text(f"# prepared by curate from {entry.source}\n{text}")
        if "!function" in text:  # lm-eval imports `!function module.name` from the YAML's own folder
            for module in entry.source.parent.glob("*.py"):
                shutil.copy2(module, task_folder / module.name)
    return folder


def target_task(name: str, path: Path, text_field: str = "text", folder: Path | None = None) -> Path:
    """Write `folder/<name>.yaml` (default folder: a new temporary one): rolling perplexity on the `text_field`
    of every record of `path` (JSONL, gzipped JSONL or Parquet). Returns the YAML's path, for `task_dirs`."""
    path = Path(path)
    builder = next((b for suffix, b in TARGET_BUILDERS.items() if path.name.endswith(suffix)), None)
    if not TASK_NAME.match(name):
        raise CurateError(f"task name {name!r}: use letters, digits, '_', '-' or '.'")
    if not text_field.isidentifier():
        raise CurateError(f"text field {text_field!r} must be a plain identifier (it is used in a template)")
    if not path.is_file():
        raise CurateError(f"target file not found: {path}")
    if builder is None:
        raise CurateError(f"target {path}: use a {', '.join(TARGET_BUILDERS)} file")
    if builder == "json":
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), None)
        if first is None:
            raise CurateError(f"target {path} has no records")
        if text_field not in json.loads(first):
            raise CurateError(f"target {path}: the first record has no {text_field!r} field; pass the text field")
    config = {
        "task": name,
        "include": str(PPL_TEMPLATE),
        "dataset_path": builder,
        "dataset_kwargs": {"data_files": {"test": str(path.resolve())}},
        "doc_to_target": "{{" + text_field + "}}",
    }
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="curate-target-"))
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.yaml"
    out.write_text(f"# rolling perplexity on {path}\n" + yaml.safe_dump(config, sort_keys=False))
    return out


# ------------------------------------------------------------------------------------------------ task items


def _rolling_example(task, doc) -> tuple[str, str]:
    return "", str(task.doc_to_target(doc))


def _choice_example(task, doc) -> tuple[str, str]:
    choices, target = task.doc_to_choice(doc), task.doc_to_target(doc)
    target = target[0] if isinstance(target, list) else target  # several right answers: the first
    answer = choices[target] if isinstance(target, int) else str(target)
    return str(task.doc_to_text(doc)), task.config.target_delimiter + answer


def _continuation_example(task, doc) -> tuple[str, str]:
    target = task.doc_to_target(doc)
    target = target[0] if isinstance(target, list) else target
    return str(task.doc_to_text(doc)), task.config.target_delimiter + str(target)


# How an evaluation document becomes a (prompt, completion) pair, per lm-eval output type: the completion is what
# the task scores (the whole document for rolling perplexity, the right choice for multiple choice).
EXAMPLE_BUILDERS = {
    "loglikelihood_rolling": _rolling_example,
    "multiple_choice": _choice_example,
    "loglikelihood": _continuation_example,
    "generate_until": _continuation_example,
}


def task_examples(spec: str, task_dirs: Sequence[Path] = (), limit: int | None = None):
    """The evaluation documents of a task (a name, or a task YAML file; a group gives all its tasks') as
    `stride_engine.Queries`: zero-shot `doc_to_text` as the prompt and what the task scores as the completion
    (see EXAMPLE_BUILDERS). At most `limit` items. Used to attribute a selection target given as a task."""
    return task_items(spec, task_dirs, limit)[0]


def task_items(spec: str, task_dirs: Sequence[Path] = (), limit: int | None = None):
    """`task_examples` and each item's part: the name of the task it comes from (a group's tasks are its parts)."""
    from lm_eval.tasks import TaskManager

    from stride_engine import Queries

    dirs, name = list(task_dirs), spec
    if spec.lower().endswith((".yaml", ".yml")):
        path = Path(spec)
        if not path.is_file():
            raise CurateError(f"task YAML {spec} does not exist")
        config = _load_flat(path)
        name = config.get("group") or config.get("task")
        if not isinstance(name, str):
            raise CurateError(f"{spec} defines no task or group (no 'task' or 'group' name)")
        dirs.append(path)
    ids: list[str] = []
    prompts: list[str] = []
    completions: list[str] = []
    parts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="curate-tasks-") as folder:
        include = prepare_tasks([name], Path(folder), dirs)
        loaded = TaskManager(include_path=str(include), include_defaults=False).load([name])
        for task_name, task in loaded["tasks"].items():
            build = EXAMPLE_BUILDERS.get(task.OUTPUT_TYPE)
            if build is None:
                raise CurateError(f"task {task_name!r}: output type {task.OUTPUT_TYPE!r} has no items to attribute")
            for index, doc in enumerate(task.eval_docs):
                if limit is not None and len(ids) >= limit:
                    break
                prompt, completion = build(task, doc)
                if not completion.strip():
                    raise CurateError(f"task {task_name!r}, document {index}: nothing to score (empty target)")
                ids.append(f"{task_name}-{index:05d}")
                prompts.append(prompt)
                completions.append(completion)
                parts.append(task_name)
    return Queries(ids, prompts, completions), parts


# ------------------------------------------------------------------------------------------------ running


def _checked_models(models: dict[str, Path]) -> dict[str, Path]:
    if not models:
        raise CurateError("no model to evaluate: give at least one model folder")
    for name, path in models.items():
        if not name:
            raise CurateError(f"model {path} has an empty name")
        if not (Path(path) / "config.json").is_file():
            raise CurateError(f"model {name!r}: {path} is not a Hugging Face model folder (no config.json)")
    return {name: Path(path) for name, path in models.items()}


def _lm_eval(model: Path, tasks: Sequence[str], manager, limit: int | None, batch_size: int, device: str) -> dict:
    import lm_eval

    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model), "tokenizer": str(model), "dtype": "float32"},
        tasks=list(tasks),
        task_manager=manager,
        device=device,
        batch_size=batch_size,
        limit=limit,
        log_samples=False,
        bootstrap_iters=1000,  # stderr of metrics without a closed form; 100k (the default) costs minutes
    )
    results.pop("samples", None)
    return results


def _jsonable(value: Any) -> Any:
    """lm-eval results with numpy scalars, sets and callables made JSON values (floats stay numbers)."""
    def default(o: Any) -> Any:
        if hasattr(o, "item"):
            return o.item()
        return list(o) if isinstance(o, (set, tuple)) else str(o)

    return json.loads(json.dumps(value, default=default))


def results_table(raw: dict[str, dict]) -> pl.DataFrame:
    """Tidy rows from lm-eval results per model: model, task, metric, value, stderr, higher_is_better, samples,
    output_type. A metric under a filter other than lm-eval's `none` is named `metric (filter)`."""
    rows = []
    for model, results in raw.items():
        for task, metrics in results.get("results", {}).items():
            config = results.get("configs", {}).get(task, {})
            samples = results.get("n-samples", {}).get(task, {}).get("effective")
            better = results.get("higher_is_better", {}).get(task, {})
            for key, value in metrics.items():
                if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                    continue
                metric, filter_name = key.split(",", 1)
                stderr = metrics.get(f"{metric}_stderr,{filter_name}")
                rows.append({
                    "model": model,
                    "task": task,
                    "metric": metric if filter_name == "none" else f"{metric} ({filter_name})",
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                    "higher_is_better": better.get(metric),
                    "samples": samples,
                    "output_type": config.get("output_type"),
                })
    schema = {"model": pl.String, "task": pl.String, "metric": pl.String, "value": pl.Float64,
              "stderr": pl.Float64, "higher_is_better": pl.Boolean, "samples": pl.Int64, "output_type": pl.String}
    return pl.DataFrame(rows, schema=schema)


def evaluate_models(
    models: dict[str, Path],
    tasks: list[str],
    out: Path,
    task_dirs: list[Path] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    device: str = "cpu",
) -> pl.DataFrame:
    """Evaluate every model (name -> local Hugging Face folder; the first is the reference) on every task with
    lm-eval, write the results and the comparison report into `out` (built aside, moved in place when done;
    an existing `out` is refused unless `overwrite`), and return the tidy results table."""
    from .retrain import resolve_device

    device = resolve_device(device)
    models = _checked_models(models)
    if not tasks:
        raise CurateError(f"no task given; available tasks: {', '.join(available_tasks(task_dirs or []))}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise CurateError(f"{out} already exists; choose another output folder or pass overwrite (--overwrite)")
    _resolve(tasks, task_dirs or [])  # refuse a bad request before the output folder exists
    from lm_eval.tasks import TaskManager

    with atomic_path(out) as tmp:
        include = prepare_tasks(tasks, tmp / "tasks", task_dirs or [])
        manager = TaskManager(include_path=str(include), include_defaults=False)  # no built-in tasks: offline
        raw = {name: _lm_eval(path, tasks, manager, limit, batch_size, device) for name, path in models.items()}
        raw = _jsonable(raw)
        table = results_table(raw)
        (tmp / "results.json").write_text(json.dumps(raw, indent=2) + "\n")
        table.write_parquet(tmp / "results.parquet")
        write_report(table, tmp, models, limit)
    return table


# ------------------------------------------------------------------------------------------------ report


def _report_rows(table: pl.DataFrame) -> pl.DataFrame:
    """The rows the report shows: per task, the metrics of its output type (all of them for unknown types)."""
    keep = []
    for (task,), rows in table.group_by(["task"], maintain_order=True):
        output_type = rows["output_type"][0]
        wanted = REPORT_METRICS.get(output_type or "", ())
        shown = [m for m in wanted if m in set(rows["metric"])] or list(dict.fromkeys(rows["metric"]))
        keep += [(task, metric, rank) for rank, metric in enumerate(shown)]
    order = pl.DataFrame(keep, schema={"task": pl.String, "metric": pl.String, "rank": pl.Int64}, orient="row")
    return table.join(order, on=["task", "metric"]).sort(["task", "rank"], maintain_order=True)


def _change(value: float, reference: float, metric: str, higher_is_better: bool | None) -> str:
    """The change of `value` against the reference: relative for perplexities (they are ratios), absolute
    otherwise, with which way is better when lm-eval says."""
    if any(v is None or math.isnan(v) for v in (value, reference)):
        return "n/a"
    if "perplexity" in metric and reference > 0:
        text = f"{100 * (value / reference - 1):+.1f} %"
    else:
        text = f"{value - reference:+.4g}"
    if higher_is_better is None or value == reference:
        return text
    return f"{text} ({'better' if (value > reference) == higher_is_better else 'worse'})"


def _number(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.4g}"
    return f"{text} ± {stderr:.2g}" if stderr is not None and not math.isnan(stderr) else text


def write_report(table: pl.DataFrame, folder: Path, models: dict[str, Path], limit: int | None = None) -> None:
    """`report.md` (tasks x models, changes against the first model) and `report.png` (main metric per task)."""
    names = list(models)
    reference = names[0]
    shown = _report_rows(table)
    header = ["task", "metric", f"{reference} (reference)", *names[1:], *[f"{n} vs {reference}" for n in names[1:]]]
    lines = [
        "# Model comparison (lm-eval)",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
        + (f"first {limit} documents per task" if limit else "all documents")
        + f"; reference: `{reference}`. Perplexities: lower is better, changes are relative; accuracies: absolute.",
        "",
        *[f"- `{name}`: {path}" for name, path in models.items()],
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for (task, metric), rows in shown.group_by(["task", "metric"], maintain_order=True):
        by_model = {r["model"]: r for r in rows.iter_rows(named=True)}
        ref = by_model.get(reference, {})
        cells = [task, metric] + [_number(by_model.get(n, {}).get("value"), by_model.get(n, {}).get("stderr")) for n in names]
        cells += [
            _change(by_model[n]["value"], ref["value"], metric, by_model[n]["higher_is_better"])
            if n in by_model and ref else "n/a"
            for n in names[1:]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "All metrics: `results.parquet`; raw lm-eval output: `results.json`; task configs: `tasks/`.", ""]
    (Path(folder) / "report.md").write_text("\n".join(lines))
    _plot(shown.filter(pl.col("rank") == 0), names, Path(folder) / "report.png")


def _plot(main: pl.DataFrame, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(main["task"]))
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(1.2 + 2.2 * max(1, len(tasks)), 3.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes[0], tasks):
        rows = {r["model"]: r for r in main.filter(pl.col("task") == task).iter_rows(named=True)}
        values = [rows[n]["value"] if n in rows else float("nan") for n in names]
        ax.bar(range(len(names)), values, color=[colours[i % len(colours)] for i in range(len(names))])
        metric = next(iter(rows.values()))["metric"] if rows else ""
        if "perplexity" in metric and all(v > 0 for v in values if not math.isnan(v)):
            ax.set_yscale("log")  # perplexities of different models span orders of magnitude
            ax.set_ylim(bottom=1)  # a perplexity is >= 1: bars start at the floor, not at an arbitrary decade
        better = next(iter(rows.values()))["higher_is_better"] if rows else None
        direction = {True: " (higher is better)", False: " (lower is better)"}.get(better, "")
        ax.set_title(f"{task}\n{metric}{direction}", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
