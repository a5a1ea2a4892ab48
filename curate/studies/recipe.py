"""`curate recipe FILE`: a whole study of one application from one YAML file, every stage cached in the output folder.

The stages every application shares, then the application's own:

    data      pool, held-out documents per domain, target items and disjoint target evaluation items (seeded)
    base      a tokenizer trained on the pool + the model configuration (untrained): what every proxy starts from
    reference the model trained on the whole pool: the model STRIDE attributes
    run       STRIDE's operators fit on the pool (`curate fit`; skipped by an application that fits its own, as contamination)
    tasks     lm-eval rolling-perplexity tasks on each target's evaluation items and each held-out domain
    jobs      the application's: the datasets its proxies train on (selection: one per target x budget x method)
    proxies   a fresh model trained on each dataset for each proxy seed (`curate retrain`), equal steps for all
    eval      lm-eval of every proxy on the tasks
    results   the application's rows (each tagged with its `task`), a Markdown table and a plot

A recipe names its application (`application: selection`, the default); the application (curate.studies.applications)
says which sections it needs, plans its jobs and reads its metrics. Paths inside the recipe are relative to the recipe
file. A rerun reuses every finished stage; `--smoke` merges the recipe's `smoke:` overrides (a few minutes, for CI).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Any

import yaml

from stride_engine import preset, read_documents
from stride_engine.artifacts import atomic_path, atomic_write_text

from ..errors import CurateError
from .applications import application_for
from .proxies import run_proxy_jobs
from .results import write_rows
from .study import Study

log = logging.getLogger(__name__)

SHARED_SECTIONS = ("output", "corpus", "targets", "model", "stride", "proxy")


# ------------------------------------------------------------------------------------------------ the recipe


def load_recipe(path: Path, smoke: bool = False) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CurateError(f"recipe {path} does not exist")
    recipe = yaml.safe_load(path.read_text()) or {}
    if smoke:
        recipe = _merge(recipe, recipe.get("smoke") or {})
    recipe.pop("smoke", None)
    recipe["targets"] = {name: sources for name, sources in (recipe.get("targets") or {}).items() if sources}
    application = application_for(recipe.setdefault("application", "selection"), path)
    for key in (*SHARED_SECTIONS, *application.sections):
        if key not in recipe:
            raise CurateError(f"recipe {path} has no {key!r} section (a {recipe['application']} recipe needs {key!r})")
    recipe["_folder"] = str(path.resolve().parent)
    return recipe


def _merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def recipe_path(recipe: dict, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else Path(recipe["_folder"]) / path


# ------------------------------------------------------------------------------------------------ data


def prepare_data(recipe: dict, folder: Path) -> dict[str, Any]:
    """Target and held-out items are drawn first, so none of them can be in the pool."""
    corpus = recipe["corpus"]
    rng = random.Random(recipe.get("seed", 0))
    records: dict[str, list[dict]] = {}
    for domain, file in corpus["files"].items():
        path = recipe_path(recipe, file)
        if not path.is_file():
            raise CurateError(f"corpus file {path} (domain {domain}) does not exist")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rng.shuffle(rows)
        records[domain] = rows
    taken: set[str] = set()

    def draw(rows: list[dict], count: int, pattern: str | None = None) -> list[dict]:
        matcher = re.compile(pattern) if pattern else None
        picked = [r for r in rows if r["id"] not in taken and (matcher is None or matcher.search(r["text"]))][:count]
        if len(picked) < count:
            raise CurateError(f"only {len(picked)} records left for a request of {count} (pattern {pattern!r})")
        taken.update(r["id"] for r in picked)
        return picked

    files: dict[str, Any] = {"targets": {}, "eval": {}, "heldout": {}}
    folder.mkdir(parents=True, exist_ok=True)
    for name, sources in recipe["targets"].items():
        items, evaluation = [], []
        for source in sources:
            if source["file"] in records:
                rows = records[source["file"]]
            else:
                path = recipe_path(recipe, source["file"])
                if not path.is_file():
                    raise CurateError(f"target {name}: file {path} does not exist")
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                rng.shuffle(rows)
            picked = draw(rows, source["items"] + source["eval"], source.get("match"))
            texts = [source["text"].format(**r) if "text" in source else r["text"] for r in picked]
            # each item names its part of the target (balanced allocation gives every part an equal share)
            part = source.get("part") or (source["file"] if source["file"] in records else Path(source["file"]).stem)
            items += [{"id": f"{name}-{r['id']}", "text": t, "part": part} for r, t in zip(picked[: source["items"]], texts)]
            evaluation += [{"id": f"{name}-eval-{r['id']}", "text": t} for r, t in zip(picked[source["items"]:], texts[source["items"]:])]
        files["targets"][name] = _write_jsonl(folder / f"target-{name}.jsonl", items)
        files["eval"][name] = _write_jsonl(folder / f"eval-{name}.jsonl", evaluation)
    pool = []
    for domain, rows in records.items():
        files["heldout"][domain] = _write_jsonl(folder / f"heldout-{domain}.jsonl", draw(rows, corpus["heldout"]))
        pool += [{**r, "domain": domain} for r in draw(rows, corpus["pool"][domain])]
    files["pool"] = _write_jsonl(folder / "pool.jsonl", pool)
    return files


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


# ------------------------------------------------------------------------------------------------ models


def build_base(recipe: dict, pool: str, folder: Path) -> Path:
    """Tokenizer trained on the pool and an untrained model of the recipe's size: the start of every proxy."""
    if (folder / "config.json").is_file():
        return folder
    from ..demo.model import train_tokenizer

    spec = recipe["model"]
    texts = [json.loads(line)["text"] for line in Path(pool).read_text().splitlines()]
    return save_base(train_tokenizer(texts, vocab_size=spec.get("vocab_size", 2048)), spec, folder)


def save_base(tokenizer, spec: dict, folder: Path) -> Path:
    """An untrained model of the recipe's `model` shape (arch, hidden_size, layers, heads, max_length) with `tokenizer`."""
    from ..demo.model import build_model

    model = build_model(tokenizer, arch=spec.get("arch", "llama"), hidden_size=spec["hidden_size"],
                        num_layers=spec["layers"], num_heads=spec["heads"], max_length=spec["max_length"])
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def fit_run(recipe: dict, reference: Path, pool: str, folder: Path) -> tuple[Path, float | None]:
    """The recipe's STRIDE run (fitted now or reused) and how long its fit took when it ran."""
    from stride_engine import Stride, StrideConfig

    from ..core.run import RunInputs

    spec = recipe["stride"]
    config = preset(spec.get("preset", "default"), **(spec.get("set") or {}))
    # The folder is named by the fit's settings, so a finished run differs at most in its recovery settings: fit()
    # then checks the trained stages, and force lets it save the new recovery settings (the score stores are
    # named by them, see core.targets.target_for_run, so none is reused stale).
    saved = folder / "config.yaml"
    rescore = saved.is_file() and StrideConfig.load(saved) != config
    inputs = folder / "inputs.json"
    started = time.perf_counter()
    Stride.from_pretrained(reference, config, folder, progress=recipe.get("progress", True)).fit(read_documents([pool]), force=rescore)
    if not inputs.is_file():  # a fit that ran now (or finished now): its time is recorded with the run
        RunInputs(reference, [Path(pool)]).save(folder, fit_seconds=round(time.perf_counter() - started, 1))
    return folder, json.loads(inputs.read_text()).get("fit_seconds")

# ------------------------------------------------------------------------------------------------ the study


def prepare_study(recipe: dict, smoke: bool = False, fit_pool_run: bool = True) -> Study:
    from ..proxy.evaluate import target_task
    from ..proxy.retrain import train_proxy

    out = Path(recipe["output"])
    files = prepare_data(recipe, out / "data")
    unknown = set(recipe["proxy"].get("target_seeds") or {}) - set(files["targets"])
    if unknown:
        raise CurateError(f"proxy.target_seeds names targets the recipe does not have: {sorted(unknown)}")
    base = build_base(recipe, files["pool"], out / "base")
    model_spec = recipe["model"]
    reference = out / "reference"
    if not reference.exists():
        train_proxy(files["pool"], reference, base, steps=model_spec["steps"], batch_size=model_spec.get("batch_size", 8),
                    seq_len=model_spec["max_length"], seed=recipe.get("seed", 0), progress=recipe.get("progress", True),
                    device=recipe.get("device", "cpu"))
    # The run is named by the settings its training depends on, STRIDE's results by all of them: changed recovery
    # settings rescore the same run, a changed fit refits.
    run, fit_seconds = None, None
    if fit_pool_run:  # an application that fits its own runs (contamination: one per injected corpus) skips it
        run, fit_seconds = fit_run(recipe, reference, files["pool"], run_folder(recipe, out))
    task_dir = out / "tasks"
    tasks = []
    for kind, entries in (("target", files["eval"]), ("domain", files["heldout"])):
        for name, file in entries.items():
            task = task_name(kind, name)
            target_task(task, Path(file), folder=task_dir)
            tasks.append(task)
    return Study(recipe, out, files, base, reference, run, fit_seconds, _key(recipe["stride"]), tasks, task_dir, smoke)


def task_name(kind: str, name: str) -> str:
    """The lm-eval task of a target's evaluation items (kind "target") or a held-out domain (kind "domain")."""
    return f"{kind}_{name}".replace("-", "_")


def run_recipe(path: Path, smoke: bool = False, workers: int | None = None, results: Path | None = None,
               progress: bool | None = None) -> Path:
    """Run a recipe's study; returns the path of its result rows (JSON, with a .md table and a .png plot beside)."""
    started = time.perf_counter()
    recipe = load_recipe(path, smoke)
    if progress is not None:
        recipe["progress"] = progress
    application = application_for(recipe["application"], path)
    study = prepare_study(recipe, smoke, getattr(application, "fits_pool_run", True))
    jobs, rows = application.plan(study)
    measured = run_proxy_jobs(jobs, workers or recipe.get("workers", 2))
    # a row without a proxy job is measured already (the contamination study's scores against its ground truth)
    rows = [{"task": application.task, **row, **(application.metrics(study, row, measured[row["job"]]) if "job" in row else {})}
            for row in rows]
    default = recipe.get("results") if not smoke else None
    destination = Path(results) if results else Path(default) if default else study.out / f"{application.task}.json"
    rows = write_rows(rows, recipe, destination, study.run_fit_seconds, time.perf_counter() - started, smoke)
    application.report(rows, recipe, destination)
    return destination


def run_folder(recipe: dict, parent: Path) -> Path:
    """Where the recipe's STRIDE run lives under `parent`: named by the settings its training depends on."""
    return Path(parent) / f"run-{_key(_fit_settings(recipe['stride']))}"


def _key(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def _fit_settings(stride: dict) -> dict:
    """The recipe's STRIDE block without the settings only recovery depends on."""
    from stride_engine.config import STAGE_FIELDS

    recovery = set(STAGE_FIELDS["scores"])
    return {**stride, "set": {k: v for k, v in (stride.get("set") or {}).items() if k not in recovery}}
