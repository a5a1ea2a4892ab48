"""A study's proxies: train a fresh model on each dataset an application chose, evaluate it with lm-eval.

A job is a plain dict (it crosses to worker processes): the dataset, the base model, the proxy settings, the tasks and
their digest. Its model is kept under OUT/proxies/KEY and its evaluation under OUT/eval/KEY, so a rerun reuses a
finished one, its evaluation only while the tasks and their items are the same.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from stride_engine.artifacts import atomic_write_text, remove_path

EVALUATED_ON = "tasks.sha1"  # in a proxy's evaluation folder: the digest of the tasks it was evaluated on


def proxy_job(key, data, out, base, recipe, seed, tasks, task_dir) -> dict[str, Any]:
    """A proxy to train on `data` with the recipe's proxy settings and evaluate on `tasks` (YAMLs in `task_dir`);
    kept under out/proxies/KEY and out/eval/KEY, so a finished one is reused (see run_proxy_jobs), its evaluation
    only while the tasks and their items are the same."""
    proxy = recipe["proxy"]
    return {
        "key": key, "name": key.replace("/", "_"),
        "data": [str(p) for p in data] if isinstance(data, (list, tuple)) else str(data), "model": str(out / "proxies" / key),
        "eval": str(out / "eval" / key), "base": str(base), "steps": proxy["steps"], "batch_size": proxy.get("batch_size", 8),
        "seq_len": recipe["model"]["max_length"], "seed": seed, "tasks": tasks, "task_dir": str(task_dir),
        "tasks_digest": tasks_digest(task_dir, tasks), "device": recipe.get("device", "cpu"),
    }


def tasks_digest(task_dir: Path, tasks: list[str]) -> str:
    """What the proxies are evaluated on: each task's settings (its YAML from `target_task`), the template it includes
    and the bytes of its items. Not where those files lie: the YAML holds absolute paths, and a study moved or read
    from another checkout scores its proxies on the same items (their evaluations are kept)."""
    digest = hashlib.sha1()
    for task in sorted(tasks):
        settings = yaml.safe_load((Path(task_dir) / f"{task}.yaml").read_text())
        items = Path(settings["dataset_kwargs"]["data_files"]["test"]).read_bytes()
        template = b""
        if settings.get("include"):
            included = Path(settings["include"])
            template = (included if included.is_absolute() else Path(task_dir) / included).read_bytes()
        placeless = {**settings, "include": None, "dataset_kwargs": {**settings["dataset_kwargs"], "data_files": None}}
        digest.update(b"\0".join([task.encode(), json.dumps(placeless, sort_keys=True).encode(), template, items, b""]))
    return digest.hexdigest()


def run_proxy_jobs(jobs: list[dict[str, Any]], workers: int) -> dict[str, dict]:
    """Every job's measured values, by key; `workers` processes of one torch thread each."""
    from tqdm import tqdm

    if workers <= 1:
        return {job["key"]: _train_and_evaluate(job) for job in tqdm(jobs, desc="proxies")}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return {r["job"]: r for r in tqdm(pool.map(_train_and_evaluate, jobs), total=len(jobs), desc="proxies")}


def _train_and_evaluate(job: dict[str, Any]) -> dict[str, Any]:
    """Train one proxy and evaluate it (in a worker process with one torch thread)."""
    import torch

    from ..proxy.evaluate import evaluate_models
    from ..proxy.retrain import train_proxy

    torch.set_num_threads(1)
    model, evaluation = Path(job["model"]), Path(job["eval"])
    if not model.exists():
        train_proxy(job["data"], model, Path(job["base"]), steps=job["steps"], seed=job["seed"],
                    batch_size=job["batch_size"], seq_len=job["seq_len"], progress=False,
                    device=job.get("device", "cpu"))
    # An evaluation is reused only on the same items: a proxy shared by every target (random, the whole pool) keeps
    # its model when a target's evaluation items change, but is scored again on the new ones.
    stamp = evaluation / EVALUATED_ON
    if not (evaluation / "results.parquet").is_file() or not stamp.is_file() or stamp.read_text() != job["tasks_digest"]:
        remove_path(evaluation)
        evaluate_models({job["name"]: model}, job["tasks"], evaluation, task_dirs=[Path(job["task_dir"])], batch_size=16,
                        device=job.get("device", "cpu"))
        atomic_write_text(stamp, job["tasks_digest"])
    import polars as pl

    table = pl.read_parquet(evaluation / "results.parquet")
    values = {(r["task"], r["metric"]): r["value"] for r in table.iter_rows(named=True)}
    training = json.loads((model / "training.json").read_text())
    return {"job": job["key"], "values": {f"{t}|{m}": v for (t, m), v in values.items()}, "proxy_seconds": training["seconds"]}
