"""Run a suite: ground truth per setting, then every method in its own process, then the quality measures.

Each method runs in a fresh child process (spawn), so its wall time and peak resident memory are its own; the
parent never holds more than one method's scores. Rows are merged into the suite's results file after every
method, so a long run can be stopped and continued (`--only` re-runs chosen methods).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import platform
import resource
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curate.studies.results import commit  # noqa: F401 (the benchmark's modules import it from here)
from stride_engine.artifacts import atomic_write_text

from .ground_truth import GroundTruth, load_or_compute
from .methods import MethodSpec
from .metrics import RemovalPlan, full_data_losses, lds, queries_without_scores, removal_curve
from .settings import build_setting
from .suites import SettingPlan, Suite

RESULTS = Path(__file__).parent / "results"


def run_suite(
    suite: Suite, only_settings: list[str] | None = None, only_methods: list[str] | None = None, out: Path = RESULTS,
    command: str = "",
) -> Path:
    path = out / f"{suite.name}.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    for plan in suite.settings:
        if only_settings and plan.setting not in only_settings:
            continue
        try:
            setting = build_setting(plan.setting, plan.scale)
        except FileNotFoundError as missing:  # the shared corpus is absent on a user's clone: say so, run the rest
            print(f"[bench] skipping setting {plan.setting}: {missing}")
            continue
        truth = _ground_truth(suite, plan, setting, out)
        removal = _removal_plan(plan, setting)
        baseline = full_data_losses(setting, removal.seeds) if removal else None
        for method in plan.methods:
            if only_methods and method.label not in only_methods:
                continue
            print(f"[bench] {suite.name} / {plan.setting} / {method.label} ...", flush=True)
            row = {**_evaluate(setting, plan, method, truth, removal, baseline), "command": command}
            print(f"[bench]   {row['status']}: LDS {row.get('lds_mean')}, {row.get('seconds')} s, {row.get('peak_rss_mb')} MB", flush=True)
            rows = [r for r in rows if (r["setting"], r["method"]) != (plan.setting, method.label)] + [row]
            atomic_write_text(path, json.dumps(rows, indent=1) + "\n")
    return path


def compute_ground_truth(suite: Suite, only_settings: list[str] | None = None, out: Path = RESULTS) -> list[str]:
    done = []
    for plan in suite.settings:
        if only_settings and plan.setting not in only_settings:
            continue
        setting = build_setting(plan.setting, plan.scale)
        truth = _ground_truth(suite, plan, setting, out)
        done.append(f"{plan.setting}: {truth.losses.shape[0]} retrains x {truth.losses.shape[1]} queries")
    return done


def _ground_truth(suite: Suite, plan: SettingPlan, setting, out: Path) -> GroundTruth:
    folder = out / "ground_truth" if suite.commit_ground_truth else plan.cache / "ground_truth"
    return load_or_compute(setting, folder, plan.lds_subsets, plan.fraction, seed=0, shared_init=plan.shared_init)


def _removal_plan(plan: SettingPlan, setting) -> RemovalPlan | None:
    if not plan.removal_ks:
        return None
    queries = np.linspace(0, len(setting.queries) - 1, num=min(plan.removal_queries, len(setting.queries))).round().astype(int)
    return RemovalPlan(plan.removal_ks, plan.removal_seeds, sorted(set(queries.tolist())))


def _evaluate(setting, plan: SettingPlan, method: MethodSpec, truth: GroundTruth, removal, baseline) -> dict[str, Any]:
    row: dict[str, Any] = {
        "setting": plan.setting, "scale": plan.scale, "method": method.label, "group": method.group,
        "function": method.function, "options": method.options, "machine": machine(), "commit": commit(),
        "ground_truth": {"subsets": int(truth.masks.shape[0]), "fraction": plan.fraction, "shared_init": plan.shared_init},
    }
    outcome = run_in_child(plan.setting, plan.scale, method, plan.threads)
    row.update({k: outcome[k] for k in ("status", "seconds", "peak_rss_mb", "setting_rss_mb") if k in outcome})
    if outcome["status"] != "ok":
        row["error"] = outcome["error"]
        return row
    scores = np.load(outcome["scores"])
    os.unlink(outcome["scores"])
    per_query = lds(scores, truth)
    row.update(lds_mean=float(per_query.mean()), lds_std=float(per_query.std()), lds_per_query=per_query.round(4).tolist(),
               queries_without_scores=queries_without_scores(scores))
    if removal is not None and method.removal:
        row["removal"] = _cached_removal(setting, scores, removal, baseline, plan.cache / "removal")
    return row


def _cached_removal(setting, scores: np.ndarray, removal: RemovalPlan, baseline: np.ndarray, folder: Path) -> dict[str, Any]:
    """Removal retrains hundreds of models; identical scores (a deterministic method re-run for its timing) reuse
    the stored curve."""
    digest = hashlib.sha256(scores.tobytes())
    digest.update(json.dumps([setting.describe(), list(removal.ks), list(removal.seeds), list(removal.queries)], sort_keys=True).encode())
    path = folder / f"{digest.hexdigest()[:20]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    curve = removal_curve(setting, scores, removal, baseline)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(curve))
    return curve


def run_in_child(setting_name: str, scale: str, method: MethodSpec, threads: int) -> dict[str, Any]:
    """Time one method end to end in a fresh process; the setting (model, data) is built before the clock starts."""
    return in_fresh_process(_child, setting_name, scale, method, threads)


def in_fresh_process(target, *args) -> dict[str, Any]:
    """`target(*args, result_path)` in a spawned process (a clean peak-memory reading); the JSON it wrote there."""
    context = multiprocessing.get_context("spawn")
    handle, result_path = tempfile.mkstemp(suffix=".json", prefix="bench-")
    os.close(handle)
    child = context.Process(target=target, args=(*args, result_path))
    child.start()
    child.join()
    text = Path(result_path).read_text()
    os.unlink(result_path)
    if child.exitcode != 0 or not text:
        return {"status": "failed", "error": f"child process exited with code {child.exitcode} (killed for memory?)"}
    return json.loads(text)


def _child(setting_name: str, scale: str, method: MethodSpec, threads: int, result_path: str) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    setting = build_setting(setting_name, scale)
    setting.model()  # build or load before timing: every method gets the same trained model for free
    setting_rss = _peak_rss_mb()
    result: dict[str, Any] = {"setting_rss_mb": setting_rss}
    try:
        function = method.resolve()
        start = time.perf_counter()
        scores = np.asarray(function(setting, **method.options), dtype=np.float64)
        result["seconds"] = round(time.perf_counter() - start, 2)
        expected = (len(setting.queries), len(setting.train))
        if scores.shape != expected or not np.isfinite(scores).all():
            raise ValueError(f"{method.label} returned scores of shape {scores.shape} (expected {expected}) or non-finite values")
        path = result_path + ".npy"
        np.save(path, scores)
        result.update(status="ok", scores=path, peak_rss_mb=_peak_rss_mb())
    except Exception as error:  # a peer package failing is a result to report, not a crash of the whole run
        result.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-2000:])
    Path(result_path).write_text(json.dumps(result))


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
    }
