"""The reweighting rule's readings checked by retraining on a corpus it was not chosen on: the quick demo corpus.

The demo corpus (stories, recipes, arithmetic, encyclopedia; curate/demo) and its model, fit with the cpu-smoke
preset as the tests fit it. A target of 30 arithmetic problems; `curate reweight` with each way of reading influence
per domain (curate.reweight.request.RULES); the corpus resampled to each mixture and to the natural one; a proxy
trained on each (`curate retrain`, 600 steps, 3 seeds) and scored with `curate eval` on 60 fresh arithmetic problems.
Everything goes through the CLI, as a user would run it.

    python benchmarks/reweight_demo_check.py        # about 8 minutes on 2 cores

Writes benchmarks/results/reweight_demo.{json,md}.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

RESULTS = Path(__file__).resolve().parent / "results" / "reweight_demo.json"
WORK = Path("runs/reweight_demo_check")
RULES = ("domain-regression", "positive", "topk-hits")
SEEDS = (0, 1, 2)
STEPS = 600


def curate(*args: str) -> None:
    command = [shutil.which("curate") or "curate", *args, "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


def fitted_demo_run():
    """The demo corpus's assets and its run (the cpu-smoke preset, as the tests fit it), fitted once under WORK."""
    from curate.core.run import RunInputs
    from curate.demo.model import build_demo_assets
    from stride_engine import Stride, preset, read_documents

    WORK.mkdir(parents=True, exist_ok=True)
    assets = build_demo_assets(WORK / "assets", quick=True, progress=False)
    run = WORK / "run"
    if not (run / "inputs.json").is_file():
        Stride.from_pretrained(assets.model_dir, preset("cpu-smoke"), run, progress=False).fit(read_documents([assets.corpus_path]))
        RunInputs(assets.model_dir, [assets.corpus_path]).save(run)
    return assets, run


def noisy_documents(documents: list[dict], seed: int = 11) -> list[dict]:
    """A planted noise domain for the demo corpus: a fifth of its documents with their words shuffled (its own words,
    no sentence left), as domain `noise`. tests/test_reweight_planted.py's corpus is the demo's plus these."""
    rng = random.Random(seed)
    noise = []
    for i, document in enumerate(rng.sample(documents, len(documents) // 5)):
        words = document["text"].split()
        rng.shuffle(words)
        noise.append({"id": f"noise-{i:05d}", "text": " ".join(words), "domain": "noise"})
    return noise


def fitted_noisy_demo_run():
    """The demo corpus plus its planted noise domain, fit as the demo run is, once under WORK."""
    from curate.core.run import RunInputs
    from stride_engine import Stride, preset, read_documents

    assets, _ = fitted_demo_run()
    run = WORK / "noisy-run"
    if not (run / "inputs.json").is_file():
        documents = [json.loads(line) for line in assets.corpus_path.read_text().splitlines() if line.strip()]
        corpus = WORK / "noisy-corpus.jsonl"
        corpus.write_text("".join(json.dumps(d) + "\n" for d in documents + noisy_documents(documents)))
        Stride.from_pretrained(assets.model_dir, preset("cpu-smoke"), run, progress=False).fit(read_documents([corpus]))
        RunInputs(assets.model_dir, [corpus]).save(run)
    return assets, run


def arithmetic_target(path: Path, rng: random.Random | None = None) -> Path:
    """The tests' target of 30 arithmetic problems (drawn from `rng`, by default seed 5 as the tests draw them),
    written to `path`."""
    from curate.demo.corpus import _arithmetic

    rng = rng or random.Random(5)
    path.write_text("".join(json.dumps({"id": f"sum-{i}", "text": _arithmetic(rng)}) + "\n" for i in range(30)))
    return path


def null_target(path: Path) -> Path:
    """The planted tests' null target: 60 fresh documents of every demo domain in the corpus's proportions (another
    seed of the same generator, none of them in the pool), written to `path`."""
    from curate.demo.corpus import generate_demo_corpus

    fresh = generate_demo_corpus(seed=99, num_entities=20, num_filler=200).documents
    sample = random.Random(3).sample(fresh, 60)
    path.write_text("".join(json.dumps({"id": f"like-{i}", "text": d["text"]}) + "\n" for i, d in enumerate(sample)))
    return path


def main() -> None:
    from curate.demo.corpus import _arithmetic
    from curate.studies.results import commit, machine

    started = time.perf_counter()
    assets, run = fitted_demo_run()
    rng = random.Random(5)  # the tests' arithmetic target; the evaluation problems are drawn after it, never seen
    target, evaluation = arithmetic_target(WORK / "sums.jsonl", rng), WORK / "sums-eval.jsonl"
    evaluation.write_text("".join(json.dumps({"id": f"eval-{i}", "text": _arithmetic(rng)}) + "\n" for i in range(60)))

    mixtures = {}
    for rule in RULES:
        curate("reweight", "--run", str(run), "--target", str(target), "--out", str(WORK / "weights" / rule), "--rule", rule, "--guard", "none", "--overwrite")
        record = json.loads((WORK / "weights" / rule / "weights.json").read_text())
        mixtures[rule] = {d["domain"]: d["weight"] for d in record["domains"]}
    mixtures = {"natural": {d["domain"]: d["natural"] for d in record["domains"]}, **mixtures}

    def train(arm: str, seed: int) -> None:
        folder = WORK / "mixtures" / f"{arm}-seed{seed}"
        (WORK / "mixtures").mkdir(exist_ok=True)
        given = WORK / "mixtures" / f"{arm}.json"
        given.write_text(json.dumps(mixtures[arm]))
        curate("reweight", "--run", str(run), "--weights", str(given), "--out", str(folder), "--out-data", str(folder / "data"),
               "--seed", str(seed), "--overwrite")
        curate("retrain", "--data", str(folder / "data"), "--out", str(WORK / "proxies" / f"{arm}-seed{seed}"),
               "--base", str(assets.model_dir), "--steps", str(STEPS), "--seed", str(seed), "--threads", "1", "--overwrite")

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda pair: train(*pair), [(arm, seed) for arm in mixtures for seed in SEEDS]))
    models = [a for arm in mixtures for seed in SEEDS for a in ("--model", f"{arm}-seed{seed}={WORK / 'proxies' / f'{arm}-seed{seed}'}")]
    curate("eval", *models, "--target", str(evaluation), "--out", str(WORK / "eval"), "--overwrite")
    results = pl.read_parquet(WORK / "eval" / "results.parquet").filter(pl.col("metric") == "bits_per_byte")
    rows = []
    stamp = {"commit": commit(), "machine": machine(), "command": "python benchmarks/reweight_demo_check.py",
             "seconds": round(time.perf_counter() - started, 1)}
    for arm, weights in mixtures.items():
        for seed in SEEDS:
            value = results.filter(pl.col("model") == f"{arm}-seed{seed}")["value"][0]
            rows.append({"task": "reweight-demo", "target": "arithmetic", "method": arm, "seed": seed,
                         "weights": {d: round(w, 4) for d, w in weights.items()}, "target_bpb": float(value), **stamp})
    RESULTS.write_text(json.dumps(rows, indent=1))
    RESULTS.with_suffix(".md").write_text(report(rows, stamp))
    print(RESULTS.with_suffix(".md").read_text())


def report(rows: list[dict], stamp: dict) -> str:
    domains = list(rows[0]["weights"])
    natural = {r["seed"]: r["target_bpb"] for r in rows if r["method"] == "natural"}
    lines = [f"# Reweighting on the demo corpus: an arithmetic target\n\nMade by `{stamp['command']}` at {stamp['commit']} "
             f"({stamp['seconds']:.0f} s). Bits per byte on 60 fresh arithmetic problems, mean over {len(SEEDS)} paired "
             f"seeds (lower is better); {STEPS}-step proxies on each mixture.\n",
             "| influence read by | " + " | ".join(domains) + " | target bpb | vs natural |",
             "| --- | " + " | ".join("---" for _ in domains) + " | --- | --- |"]
    for arm in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == arm]
        values = np.array([r["target_bpb"] for r in mine])
        delta = np.mean([r["target_bpb"] - natural[r["seed"]] for r in mine])
        lines.append(f"| {arm} | " + " | ".join(f"{mine[0]['weights'][d]:.3f}" for d in domains)
                     + f" | {values.mean():.3f} ± {values.std(ddof=1):.3f} | {delta:+.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
