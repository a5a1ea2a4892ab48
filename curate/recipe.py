"""`curate recipe FILE`: a whole selection study from one YAML file, every stage cached in the output folder.

    data      pool, held-out documents per domain, target items and disjoint target evaluation items (seeded)
    base      a tokenizer trained on the pool + the model configuration (untrained): what every proxy starts from
    reference the model trained on the whole pool: the model STRIDE attributes
    run       STRIDE's operators fit on the pool (`curate fit`)
    selections  one per target x budget x method (x seed for the seeded methods), each a `curate select` output
    proxies   a fresh model trained on each selection for each proxy seed (`curate retrain`), equal steps for all
    eval      lm-eval rolling perplexity of every proxy on each target's evaluation items and each held-out domain
    results   one row per target x budget x method x seed (`task: selection`), plus a Markdown table and a plot

Paths inside the recipe are relative to the recipe file. A rerun reuses every finished stage; `--smoke` merges
the recipe's `smoke:` overrides (a few minutes, for CI).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from stride_engine import preset, read_documents
from stride_engine.artifacts import atomic_path, atomic_write_text, remove_path

from .errors import CurateError

log = logging.getLogger(__name__)

EVALUATED_ON = "tasks.sha1"  # in a proxy's evaluation folder: the digest of the tasks it was evaluated on
SEEDED_METHODS = ("random", "dsir")  # their selection changes with the seed; the others' does not
# STRIDE's selections: (budget allocation, aggregation rule; None = the recipe's `selection.rule`). Allocation
# (curate.budget): greedy top scores, shares across recovery groups, or equal shares for the target's parts.
# Rule (curate.runs.document_influence).
STRIDE_METHODS = {
    "stride": ("greedy", None),
    "stride-proportional": ("proportional", None),
    "stride-standardized": ("greedy", "standardized"),
    "stride-balanced": ("balanced", None),  # an equal share of the budget for each part of the target
}
# A baseline under balanced allocation: each part of the target scored on its own, the same control STRIDE has.
BALANCED_BASELINES = {"bm25-balanced": "bm25"}


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
    for key in ("output", "corpus", "targets", "model", "stride", "selection", "proxy"):
        if key not in recipe:
            raise CurateError(f"recipe {path} has no {key!r} section")
    recipe["_folder"] = str(path.resolve().parent)
    return recipe


def _merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _path(recipe: dict, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else Path(recipe["_folder"]) / path


# ------------------------------------------------------------------------------------------------ data


def prepare_data(recipe: dict, folder: Path) -> dict[str, Any]:
    """Target and held-out items are drawn first, so none of them can be in the pool."""
    corpus = recipe["corpus"]
    rng = random.Random(recipe.get("seed", 0))
    records: dict[str, list[dict]] = {}
    for domain, file in corpus["files"].items():
        path = _path(recipe, file)
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
                path = _path(recipe, source["file"])
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
    from .demo.model import build_model, train_tokenizer

    spec = recipe["model"]
    texts = [json.loads(line)["text"] for line in Path(pool).read_text().splitlines()]
    tokenizer = train_tokenizer(texts, vocab_size=spec.get("vocab_size", 2048))
    model = build_model(tokenizer, arch=spec.get("arch", "llama"), hidden_size=spec["hidden_size"],
                        num_layers=spec["layers"], num_heads=spec["heads"], max_length=spec["max_length"])
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def fit_run(recipe: dict, reference: Path, pool: str, folder: Path) -> tuple[Path, float | None]:
    """The recipe's STRIDE run (fitted now or reused) and how long its fit took when it ran."""
    from stride_engine import Stride, StrideConfig

    from .runs import RunInputs

    spec = recipe["stride"]
    config = preset(spec.get("preset", "default"), **(spec.get("set") or {}))
    # The folder is named by the fit's settings, so a finished run differs at most in its recovery settings: fit()
    # then checks the trained stages, and force lets it save the new recovery settings (the score stores are
    # named by them, see select.target_for_run, so none is reused stale).
    saved = folder / "config.yaml"
    rescore = saved.is_file() and StrideConfig.load(saved) != config
    inputs = folder / "inputs.json"
    started = time.perf_counter()
    Stride.from_pretrained(reference, config, folder, progress=recipe.get("progress", True)).fit(read_documents([pool]), force=rescore)
    if not inputs.is_file():  # a fit that ran now (or finished now): its time is recorded with the run
        RunInputs(reference, [Path(pool)]).save(folder, fit_seconds=round(time.perf_counter() - started, 1))
    return folder, json.loads(inputs.read_text()).get("fit_seconds")


# ------------------------------------------------------------------------------------------------ jobs


def _train_and_evaluate(job: dict[str, Any]) -> dict[str, Any]:
    """Train one proxy and evaluate it (in a worker process with one torch thread)."""
    import torch

    from .evaluate import evaluate_models
    from .retrain import train_proxy

    torch.set_num_threads(1)
    model, evaluation = Path(job["model"]), Path(job["eval"])
    if not model.exists():
        train_proxy(job["data"], model, Path(job["base"]), steps=job["steps"], seed=job["seed"],
                    batch_size=job["batch_size"], seq_len=job["seq_len"], progress=False)
    # An evaluation is reused only on the same items: a proxy shared by every target (random, the whole pool) keeps
    # its model when a target's evaluation items change, but is scored again on the new ones.
    stamp = evaluation / EVALUATED_ON
    if not (evaluation / "results.parquet").is_file() or not stamp.is_file() or stamp.read_text() != job["tasks_digest"]:
        remove_path(evaluation)
        evaluate_models({job["name"]: model}, job["tasks"], evaluation, task_dirs=[Path(job["task_dir"])], batch_size=16)
        atomic_write_text(stamp, job["tasks_digest"])
    import polars as pl

    table = pl.read_parquet(evaluation / "results.parquet")
    values = {(r["task"], r["metric"]): r["value"] for r in table.iter_rows(named=True)}
    training = json.loads((model / "training.json").read_text())
    return {"job": job["key"], "values": {f"{t}|{m}": v for (t, m), v in values.items()}, "proxy_seconds": training["seconds"]}


def run_recipe(path: Path, smoke: bool = False, workers: int | None = None, results: Path | None = None) -> Path:
    from .evaluate import target_task
    from .select import SelectionRequest, run_selection, target_for_run

    recipe = load_recipe(path, smoke)
    out = Path(recipe["output"])
    started = time.perf_counter()
    files = prepare_data(recipe, out / "data")
    base = build_base(recipe, files["pool"], out / "base")
    model_spec, proxy = recipe["model"], recipe["proxy"]
    reference = out / "reference"
    if not reference.exists():
        from .retrain import train_proxy

        train_proxy(files["pool"], reference, base, steps=model_spec["steps"], batch_size=model_spec.get("batch_size", 8),
                    seq_len=model_spec["max_length"], seed=recipe.get("seed", 0), progress=recipe.get("progress", True))
    # The run is named by the settings its training depends on, STRIDE's selections by all of them: changed
    # recovery settings rescore the same run, a changed fit refits.
    stride_key = _key(recipe["stride"])
    run, fit_seconds = fit_run(recipe, reference, files["pool"], out / f"run-{_key(_fit_settings(recipe['stride']))}")

    task_dir = out / "tasks"
    tasks = []
    for kind, entries in (("target", files["eval"]), ("domain", files["heldout"])):
        for name, file in entries.items():
            task = f"{kind}_{name}".replace("-", "_")
            target_task(task, Path(file), folder=task_dir)
            tasks.append(task)

    selection, jobs, rows = recipe["selection"], [], []
    target_seeds = proxy.get("target_seeds") or {}  # more proxy seeds where a target's effects are small
    unknown = set(target_seeds) - set(files["targets"])
    if unknown:
        raise CurateError(f"proxy.target_seeds names targets the recipe does not have: {sorted(unknown)}")
    # Two methods that select the same documents (balanced allocation on a target of one part is greedy) share
    # their proxies: the same data gives the same proxy, and training it twice would only spend time.
    same_selection: dict[tuple, Path] = {}
    queued: set[str] = set()  # a job is queued once (random selections and the whole pool serve every target)
    for target, target_file in files["targets"].items():
        seeds = target_seeds.get(target, proxy["seeds"])
        target_name = target_for_run(run, target_file, []).name  # names the target's queries and recovery settings
        for budget in selection["budgets"]:
            for method in selection["methods"]:
                for seed in seeds if method in SEEDED_METHODS else [None]:
                    label = method if seed is None else f"{method}-seed{seed}"
                    if method in STRIDE_METHODS:
                        label = f"{method}-{stride_key}"
                    folder = out / "selections" / target / budget.replace("%", "pct") / label
                    if method == "random":  # a random selection does not depend on the target: share it
                        folder = out / "selections" / "_random" / budget.replace("%", "pct") / label
                    if method != "random":  # a selection made for other queries is stale, and so is what came of it
                        _drop_if_stale(folder, target_name, out)
                    allocation, rule = STRIDE_METHODS.get(method, ("balanced" if method in BALANCED_BASELINES else "greedy", None))
                    t0 = time.perf_counter()
                    if not (folder / "manifest.json").is_file():
                        run_selection(SelectionRequest(
                            run=str(run), target=target_file, budget=budget, out=str(folder),
                            method="stride" if method in STRIDE_METHODS else BALANCED_BASELINES.get(method, method),
                            allocation=allocation, seed=seed or 0, rule=rule or selection.get("rule", "mean"),
                        ), overwrite=folder.exists())
                    manifest = json.loads((folder / "manifest.json").read_text())
                    chosen = (target, budget, seed, tuple(sorted(d["id"] for d in manifest["selected_documents"])))
                    trained = same_selection.setdefault(chosen, folder)
                    for proxy_seed in seeds if seed is None else [seed]:
                        key = f"{trained.relative_to(out)}/proxy-seed{proxy_seed}"
                        if trained == folder and key not in queued:
                            queued.add(key)
                            jobs.append(proxy_job(key, folder / "selected", out, base, recipe, proxy_seed, tasks, task_dir))
                        rows.append({
                            "task": "selection", "target": target, "budget": budget, "method": method,
                            "seed": proxy_seed, "job": key, "selection_seconds": round(time.perf_counter() - t0, 2),
                            "selected_documents": manifest["selected"]["documents"],
                            "selected_tokens": manifest["selected"]["tokens"],
                            "selected_per_domain": {str(r["domain"]): r["selected_documents"] for r in manifest["per_domain"]},
                        })
        for proxy_seed in seeds:  # the whole pool, same steps: what the budget costs
            key = f"full-pool/proxy-seed{proxy_seed}"
            if key not in queued:
                queued.add(key)
                jobs.append(proxy_job(key, Path(files["pool"]), out, base, recipe, proxy_seed, tasks, task_dir))
            rows.append({"task": "selection", "target": target, "budget": "100%", "method": "full-pool", "seed": proxy_seed, "job": key})

    measured = run_proxy_jobs(jobs, workers or recipe.get("workers", 2))
    for row in rows:
        values = measured[row["job"]]["values"]
        row["target_ppl"] = values[f"target_{row['target'].replace('-', '_')}|word_perplexity"]
        row["target_bits_per_byte"] = values[f"target_{row['target'].replace('-', '_')}|bits_per_byte"]
        row["domain_ppl"] = {d: values[f"domain_{d}|word_perplexity"] for d in files["heldout"]}
        row["proxy_seconds"] = measured[row["job"]]["proxy_seconds"]
    from .selection_report import write_results

    return write_results(rows, recipe, results or _path_from_cwd(recipe.get("results") if not smoke else None, out),
                         fit_seconds, time.perf_counter() - started, smoke)


def _drop_if_stale(folder: Path, target_name: str, out: Path) -> None:
    """Remove a finished selection made for another version of the target (or other recovery settings), with its
    proxies and evaluations, so that the study recomputes them instead of reporting stale numbers."""
    manifest = folder / "manifest.json"
    made_for = json.loads(manifest.read_text())["request"].get("target_run_name") if manifest.is_file() else target_name
    if made_for == target_name:
        return
    relative = folder.relative_to(out)
    log.warning("%s was made for %s, the target is now %s: redoing it", relative, made_for, target_name)
    for path in (folder, out / "proxies" / relative, out / "eval" / relative):
        remove_path(path)


def _key(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def _fit_settings(stride: dict) -> dict:
    """The recipe's STRIDE block without the settings only recovery depends on."""
    from stride_engine.config import STAGE_FIELDS

    recovery = set(STAGE_FIELDS["scores"])
    return {**stride, "set": {k: v for k, v in (stride.get("set") or {}).items() if k not in recovery}}


def proxy_job(key, data, out, base, recipe, seed, tasks, task_dir) -> dict[str, Any]:
    """A proxy to train on `data` with the recipe's proxy settings and evaluate on `tasks` (YAMLs in `task_dir`);
    kept under out/proxies/KEY and out/eval/KEY, so a finished one is reused (see run_proxy_jobs), its evaluation
    only while the tasks and their items are the same."""
    proxy = recipe["proxy"]
    return {
        "key": key, "name": key.replace("/", "_"), "data": str(data), "model": str(out / "proxies" / key),
        "eval": str(out / "eval" / key), "base": str(base), "steps": proxy["steps"], "batch_size": proxy.get("batch_size", 8),
        "seq_len": recipe["model"]["max_length"], "seed": seed, "tasks": tasks, "task_dir": str(task_dir),
        "tasks_digest": tasks_digest(task_dir, tasks),
    }


def tasks_digest(task_dir: Path, tasks: list[str]) -> str:
    """What the proxies are evaluated on: each task's YAML (from `target_task`) and the bytes of its items."""
    digest = hashlib.sha1()
    for task in sorted(tasks):
        config = (Path(task_dir) / f"{task}.yaml").read_text()
        items = Path(yaml.safe_load(config)["dataset_kwargs"]["data_files"]["test"]).read_bytes()
        digest.update(b"\0".join([task.encode(), config.encode(), items, b""]))
    return digest.hexdigest()


def run_proxy_jobs(jobs: list[dict[str, Any]], workers: int) -> dict[str, dict]:
    """Every job's measured values, by key; `workers` processes of one torch thread each."""
    from tqdm import tqdm

    if workers <= 1:
        return {job["key"]: _train_and_evaluate(job) for job in tqdm(jobs, desc="proxies")}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return {r["job"]: r for r in tqdm(pool.map(_train_and_evaluate, jobs), total=len(jobs), desc="proxies")}


def _path_from_cwd(value: str | None, out: Path) -> Path:
    return Path(value) if value else out / "selection.json"


__all__ = ["load_recipe", "run_recipe", "prepare_data"]
