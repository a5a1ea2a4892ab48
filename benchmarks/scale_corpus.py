"""Time and peak memory of every stage of a run against corpus size, with the demo's small model.

    python -m benchmarks.scale_corpus --sizes 10000 50000 200000 --state-cache memory disk recompute

For each size a corpus of that many documents is generated the way the demo's is (its planted facts plus filler
documents of its four domains), and one fresh process runs the stages a user runs: read the corpus, chunk it and
draw the design, compute the states at the cut, train the operators (a fixed number of steps: their cost does not
depend on n), measure 50 queries' responses, recover the scores, and select 10% of the pool with `curate select`'s
job (local executor). A thread samples the process's resident memory every 20 ms; each stage reports its wall time,
the peak RSS while it ran, and the peak of its anonymous part (RSS less file-backed pages: with state_cache="disk"
the states are file pages the OS can drop, which RSS counts while they are mapped). Each size runs with the states
held in memory, with `--state-cache disk` mapped from a file, and with `recompute` not held at all (the prefix runs
on the rows each step reads). Results: benchmarks/results/scale_corpus.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache" / "scale_corpus"
RESULTS = HERE / "results" / "scale_corpus.json"
STAGES = ("read", "chunks+design", "states", "operators", "responses", "recover", "select")
SETTINGS = dict(steps=100, checkpoint_every=1000)  # the cpu-smoke preset otherwise
QUERIES = 50


class MemorySampler(threading.Thread):
    """Resident memory of this process, sampled; `peak_since(t)` is the largest sample taken after time t."""

    def __init__(self, every: float = 0.02):
        super().__init__(daemon=True)
        self.every, self.samples, self.process = every, [], psutil.Process()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            time.sleep(self.every)

    def sample(self) -> float:
        now, memory = time.time(), self.process.memory_info()
        self.samples.append((now, memory.rss, memory.rss - memory.shared))  # shared: file-backed and shared pages
        return now

    def peak_between(self, start: float, end: float, part: int = 1) -> int:
        """The largest sample in [start, end], counting the last one before start (a stage starts where the last left);
        part 1 is RSS, 2 its anonymous part."""
        before = [sample[part] for sample in self.samples if sample[0] < start][-1:]
        return max(before + [sample[part] for sample in self.samples if start <= sample[0] <= end])


def corpus_for(size: int) -> tuple[Path, Path, Path]:
    """The demo's model, and a corpus of `size` documents with its queries (generated once, cached)."""
    from curate.demo.corpus import generate_demo_corpus, write_jsonl
    from curate.demo.model import build_demo_assets

    assets = build_demo_assets(CACHE / "demo", quick=True, progress=False)
    folder = CACHE / str(size)
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    if not corpus_path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        corpus = generate_demo_corpus(1, num_entities=140, num_filler=max(0, size - 140 * 4))
        write_jsonl(corpus.documents[:size], corpus_path)
        write_jsonl([{k: q[k] for k in ("id", "prompt", "completion")} for q in corpus.queries[:QUERIES]], queries_path)
    return assets.model_dir, corpus_path, queries_path


def measure(size: int, state_cache: str) -> dict:
    """One size in this process: every stage's seconds and peak RSS (MB)."""
    from curate.select import SelectionRequest, run_selection
    from curate.core.run import RunInputs
    from stride_engine import Stride, preset, read_documents, read_queries

    model_dir, corpus_path, queries_path = corpus_for(size)
    run_dir = CACHE / "runs" / f"{size}-{state_cache}"
    selected = run_dir.parent / f"{size}-{state_cache}-selected"
    import shutil

    for earlier in (run_dir, selected):  # an earlier run's selection would be found finished and not measured
        if earlier.exists():
            shutil.rmtree(earlier)
    sampler = MemorySampler()
    sampler.start()
    marks = {"start": sampler.sample()}
    documents = read_documents([corpus_path])
    marks["read"] = sampler.sample()
    first_step: list[float] = []
    stride = Stride.from_pretrained(model_dir, preset("cpu-smoke", **SETTINGS, state_cache=state_cache), run_dir, progress=False)
    stride.fit(documents, on_step=lambda step: first_step.append(time.time()) if not first_step else None)
    marks["chunks+design"] = (run_dir / "stages" / "design.json").stat().st_mtime
    marks["states"] = first_step[0]
    marks["operators"] = (run_dir / "stages" / "operators.json").stat().st_mtime
    RunInputs(Path(model_dir), [corpus_path]).save(run_dir)
    queries = read_queries(queries_path)
    stride.responses(queries)
    marks["responses"] = sampler.sample()
    stride.recover()
    marks["recover"] = sampler.sample()
    run_selection(SelectionRequest(run=str(run_dir), target=str(queries_path), budget="10%", out=str(selected)))
    marks["select"] = sampler.sample()
    sampler.stopped.set()
    sampler.join()
    row = {"documents": size, "state_cache": state_cache, "chunks": len(stride._examples), "queries": len(queries.ids)}
    previous = marks["start"]
    for stage in STAGES:
        row[f"{stage}_seconds"] = round(marks[stage] - previous, 2)
        row[f"{stage}_peak_mb"] = round(sampler.peak_between(previous, marks[stage]) / 2**20, 1)
        row[f"{stage}_peak_anon_mb"] = round(sampler.peak_between(previous, marks[stage], part=2) / 2**20, 1)
        previous = marks[stage]
    row["peak_mb"] = round(max(sample[1] for sample in sampler.samples) / 2**20, 1)
    row["peak_anon_mb"] = round(max(sample[2] for sample in sampler.samples) / 2**20, 1)
    return row


def report(rows: list[dict], stamp: dict) -> str:
    lines = [
        "# Time and peak memory against corpus size",
        "",
        f"Made with `{stamp['command']}` at {stamp['commit']} on {_machine(stamp['machine'])} ({stamp['total_seconds']} s in all).",
        f"The demo's small model, the `cpu-smoke` preset with {SETTINGS['steps']} operator steps, {QUERIES} queries, "
        "a 10% selection; one fresh process per size and state cache. Each cell: seconds / peak RSS MB / peak anonymous MB "
        "while the stage ran (anonymous: RSS less file-backed pages, which the OS can drop).",
        "",
        "| documents | states | chunks | " + " | ".join(STAGES) + " | peak RSS / anon MB |",
        "| --- " * (len(STAGES) + 4) + "|",
    ]
    for row in rows:
        cells = [f"{row[f'{s}_seconds']:.1f} / {row[f'{s}_peak_mb']:.0f} / {row[f'{s}_peak_anon_mb']:.0f}" for s in STAGES]
        lines.append(f"| {row['documents']:,} | {row['state_cache']} | {row['chunks']:,} | " + " | ".join(cells)
                     + f" | {row['peak_mb']:.0f} / {row['peak_anon_mb']:.0f} |")
    for cache in dict.fromkeys(row["state_cache"] for row in rows):
        lines += _growth([row for row in rows if row["state_cache"] == cache], cache)
    return "\n".join(lines) + "\n"


def _growth(rows: list[dict], cache: str) -> list[str]:
    lines = []
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        ratio = last["chunks"] / first["chunks"]
        lines += ["", f"States in {cache}: from {first['documents']:,} to {last['documents']:,} documents ({ratio:.1f}× the chunks), "
                  "each stage grew by:", ""]
        for stage in STAGES:
            time_ratio = last[f"{stage}_seconds"] / max(first[f"{stage}_seconds"], 1e-3)
            lines.append(f"- {stage}: time ×{time_ratio:.1f}; peak RSS {first[f'{stage}_peak_mb']:.0f} → {last[f'{stage}_peak_mb']:.0f} MB, "
                         f"anonymous {first[f'{stage}_peak_anon_mb']:.0f} → {last[f'{stage}_peak_anon_mb']:.0f} MB")
    return lines


def _machine(machine) -> str:
    if not isinstance(machine, dict):
        return str(machine)
    return f"{machine.get('platform', '?')}, Python {machine.get('python', '?')}, {machine.get('cpus', '?')} CPUs"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for cache, style in (("memory", "-"), ("disk", "--"), ("recompute", ":")):
        mine = [row for row in rows if row["state_cache"] == cache]
        sizes = [row["documents"] for row in mine]
        for color, stage in enumerate(STAGES):
            label = f"{stage} ({cache})" if cache == "memory" or stage == "states" else None
            left.plot(sizes, [row[f"{stage}_seconds"] for row in mine], style, color=f"C{color}", marker="o", label=label)
            right.plot(sizes, [row[f"{stage}_peak_anon_mb"] for row in mine], style, color=f"C{color}", marker="o")
    for axis, label in ((left, "wall time (s); dashed: states on disk, dotted: recomputed"), (right, "peak anonymous memory during the stage (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("documents")
        axis.set_ylabel(label)
    left.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000, 200000])
    parser.add_argument("--state-cache", nargs="+", default=["memory"], choices=["memory", "disk", "recompute"])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process measuring one size
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.state_cache[0])))
        return
    from benchmarks.classifier_study import write_study

    started, rows = time.perf_counter(), []
    for cache in args.state_cache:
        for size in args.sizes:
            corpus_for(size)  # generated outside the measured process
            child = subprocess.run([sys.executable, "-m", "benchmarks.scale_corpus", "--one", str(size), "--state-cache", cache],
                                   capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if child.returncode:
                raise SystemExit(f"size {size} ({cache}) failed:\n{child.stderr[-4000:]}")
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    command = ("python -m benchmarks.scale_corpus --sizes " + " ".join(map(str, args.sizes))
               + " --state-cache " + " ".join(args.state_cache))
    write_study(args.out, rows, command, started, report)
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
