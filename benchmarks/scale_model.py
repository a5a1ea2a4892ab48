"""Cost against model size: STRIDE's fit and per-query cost beside LoGra, EK-FAC and TracIn, in one run.

    python -m benchmarks.scale_model --sizes 0.5M 5M 15M 35M

The pre-training setting's smoke data (200 documents of the shared four-domain corpus, 128 tokens each, 20 held-out
queries) with Llamas of growing width and depth, each trained briefly (40 steps: cost does not depend on how well a
model is trained). Every method runs in a fresh process. A gradient method runs twice, on the first 5 queries and
on all 20, so its cost splits into a fixed part (the pass over the training set, the Hessian factors) and a part per
query: per query = (t20 − t5) / 15, fixed = t5 − 5 · per query. STRIDE's stages are timed apart in one run on 20
queries: fixed = the fit (chunks, design, states, operators), per query = (responses + recovery) / 20. Peak RSS is the process's
whole peak, model included (`setting_rss_mb` is the peak before the method started). Needs ../shared/data.
Methods and options are the full benchmark's for the pre-training LM (suites.LM_STRIDE, suites.LM_PEERS; STRIDE in
its logit form, the benchmark's main row); TracIn is
dattri's TracInAttributor with the final checkpoint (`grad-dot`). Results: benchmarks/results/scale_model.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale_model.json"
QUERY_COUNTS = (5, 20)

# Llama shapes (hidden size, layers, heads; MLP 4x, tied embeddings, vocabulary 1,024): about 0.5, 5, 15 and 35 M
# parameters.
SIZES: dict[str, dict[str, int]] = {
    "0.5M": dict(hidden_size=128, num_layers=2, num_heads=4),
    "5M": dict(hidden_size=256, num_layers=5, num_heads=4),
    "15M": dict(hidden_size=384, num_layers=6, num_heads=6),
    "35M": dict(hidden_size=512, num_layers=8, num_heads=8),
}


def methods() -> list[Any]:
    from benchmarks.suites import LM_PEERS, LM_STRIDE, STRIDE, _m

    peers = {spec.label: spec for spec in LM_PEERS}
    return [
        _m("stride-logit", STRIDE, "stride", form="logit", **LM_STRIDE),
        peers["grad-dot"], peers["logra"], peers["ekfac"],
    ]


def setting_for(size: str):
    from benchmarks.settings.pretrain import SCALES, PretrainSetting

    config = json.loads(json.dumps(SCALES["smoke"]))
    config["model"] = dict(SIZES[size])
    return PretrainSetting("smoke", config=config, workers=1)


def _child(size: str, method, queries: int, threads: int, result_path: str) -> None:
    import torch

    from benchmarks.runner import _peak_rss_mb as peak

    torch.set_num_threads(threads)
    setting = setting_for(size)
    model = setting.model()
    setting.queries = type(setting.queries)(  # the first `queries` held-out documents
        {key: value[:queries] for key, value in setting.queries.tensors.items()}, setting.queries.ids[:queries],
        setting.queries.texts[:queries] if setting.queries.texts else None,
        setting.queries.domains[:queries] if setting.queries.domains else None,
    )
    result: dict[str, Any] = {"setting_rss_mb": peak(), "parameters": sum(p.numel() for p in model.parameters())}
    try:
        start = time.perf_counter()
        if method.group == "stride":
            scores, result["fit_seconds"] = _stride_timed(setting, method.options)
        else:
            scores = np.asarray(method.resolve()(setting, **method.options))
        result.update(status="ok", seconds=round(time.perf_counter() - start, 2), peak_rss_mb=peak(),
                      finite=bool(np.isfinite(scores).all()), shape=list(scores.shape))
    except Exception as error:  # a peer failing at one size is a result to report
        result.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-2000:])
    Path(result_path).write_text(json.dumps(result))


def _stride_timed(setting, options: dict[str, Any]) -> tuple[np.ndarray, float]:
    """benchmarks.methods.stride.stride with the fit timed apart from the queries' responses and recovery."""
    from benchmarks.methods.stride import _examples, dense_scores
    from stride_engine import Stride, preset

    options = dict(options)
    config = preset(options.pop("preset_name", "cpu-smoke"), **options)
    with tempfile.TemporaryDirectory(prefix="stride-scale-") as folder:
        start = time.perf_counter()
        engine = Stride(setting.adapter(), config, folder, progress=False).fit(_examples(setting.train))
        fit_seconds = round(time.perf_counter() - start, 2)
        return dense_scores(engine, Path(folder), engine.responses(_examples(setting.queries))), fit_seconds


def run_one(size: str, method, queries: int, threads: int) -> dict[str, Any]:
    from benchmarks.runner import in_fresh_process

    return in_fresh_process(_child, size, method, queries, threads)


def split(rows: list[dict]) -> list[dict]:
    """One row per (size, method): fixed and per-query seconds from the two query counts."""
    out = []
    for key in dict.fromkeys((r["size"], r["method"]) for r in rows):
        runs = {r["queries"]: r for r in rows if (r["size"], r["method"]) == key}
        few, many = runs.get(QUERY_COUNTS[0]), runs.get(QUERY_COUNTS[1])
        row = {"size": key[0], "method": key[1], "parameters": (few or many or {}).get("parameters")}
        if many and many["status"] == "ok" and "fit_seconds" in many:  # STRIDE: its stages timed apart
            per_query = (many["seconds"] - many["fit_seconds"]) / QUERY_COUNTS[1]
            row.update(fixed_seconds=many["fit_seconds"], per_query_seconds=round(per_query, 3), seconds_20=many["seconds"],
                       peak_rss_mb=many["peak_rss_mb"], model_rss_mb=many["setting_rss_mb"])
        elif few and many and few["status"] == many["status"] == "ok":
            per_query = max(0.0, (many["seconds"] - few["seconds"]) / (QUERY_COUNTS[1] - QUERY_COUNTS[0]))
            row.update(fixed_seconds=round(max(0.0, few["seconds"] - QUERY_COUNTS[0] * per_query), 2),
                       per_query_seconds=round(per_query, 3), seconds_20=many["seconds"], peak_rss_mb=many["peak_rss_mb"],
                       model_rss_mb=many["setting_rss_mb"])
        else:
            row["error"] = next((r.get("error") for r in (few, many) if r and r.get("status") != "ok"), "missing")
        out.append(row)
    return out


def report(rows: list[dict], stamp: dict) -> str:
    from benchmarks.scale_corpus import _machine

    table = split(rows)
    lines = [
        "# Cost against model size",
        "",
        f"Made with `{stamp['command']}` at {stamp['commit']} on {_machine(stamp['machine'])} ({stamp['total_seconds']} s in all).",
        "200 training documents of 128 tokens, the pre-training benchmark's options for every method; each run in a fresh "
        "process with 2 threads. Fixed: the part that does not grow with the queries (STRIDE's fit; the gradient methods' "
        f"training-set pass and factors); per query: STRIDE's responses and recovery over {QUERY_COUNTS[1]} queries, the "
        f"gradient methods' difference between runs with {QUERY_COUNTS[0]} and {QUERY_COUNTS[1]} queries.",
        "",
        "| model | parameters | method | fixed s | per query s | total s (20 queries) | peak RSS MB (model alone) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table:
        if "error" in row:
            lines.append(f"| {row['size']} | {row['parameters'] or '?'} | {row['method']} | failed: {row['error'][:80]} | | | |")
            continue
        lines.append(f"| {row['size']} | {row['parameters'] / 1e6:.2f} M | {row['method']} | {row['fixed_seconds']:.1f} | "
                     f"{row['per_query_seconds']:.3f} | {row['seconds_20']:.1f} | {row['peak_rss_mb']:.0f} ({row['model_rss_mb']:.0f}) |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = [row for row in split(rows) if "error" not in row]
    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    for method in dict.fromkeys(row["method"] for row in table):
        mine = [row for row in table if row["method"] == method]
        sizes = [row["parameters"] / 1e6 for row in mine]
        for axis, key in zip(axes, ("fixed_seconds", "per_query_seconds", "peak_rss_mb")):
            axis.plot(sizes, [row[key] for row in mine], marker="o", label=method)
    for axis, label in zip(axes, ("fixed cost (s)", "cost per query (s)", "peak RSS (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("parameters (M)")
        axis.set_ylabel(label)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--methods", nargs="+", help="labels to run (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from benchmarks.classifier_study import write_study

    started, rows = time.perf_counter(), []
    chosen = [m for m in methods() if not args.methods or m.label in args.methods]
    for size in args.sizes:
        setting_for(size).model()  # trained (and cached) before any clock starts
        for method in chosen:
            for queries in QUERY_COUNTS[1:] if method.group == "stride" else QUERY_COUNTS:
                outcome = run_one(size, method, queries, args.threads)
                rows.append({"size": size, "method": method.label, "queries": queries, **outcome})
                print({k: v for k, v in rows[-1].items() if k != "traceback"}, flush=True)
        command = "python -m benchmarks.scale_model --sizes " + " ".join(args.sizes) + (
            " --methods " + " ".join(args.methods) if args.methods else "")
        write_study(args.out, rows, command, started, report)  # after every size: a long run keeps what it measured
        plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
