"""Recovery groups against pool size: k-means on the whole pool against k-means on a sample plus batched assignment.

    python -m benchmarks.scale_groups --sizes 50000 200000 1000000 --dim 256

Features are pooled-state-like float32 rows (n x dim) around 16 planted centres, made inside each measured process;
each (size, way) runs in a fresh process. `whole`: k-means on every row (what stride_engine.groups did before its
sample cap, and still does for a pool within it); `sampled`: the engine's way beyond the cap (KMEANS_SAMPLE rows,
then every row to its nearest centre). Reported: the seconds of cluster_examples, the process's peak RSS above the
features it was given, and how well the groups match the planted centres (purity: the share of rows in their
group's majority centre).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "scale_groups.json"
GROUPS = 16


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def measure(size: int, dim: int, way: str) -> dict:
    from stride_engine import groups as grouping

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (GROUPS, dim)).astype(np.float32)
    truth = rng.integers(0, GROUPS, size)
    features = np.empty((size, dim), dtype=np.float32)
    for start in range(0, size, 65_536):  # made in batches: the only pool-sized array is the float32 features
        rows = truth[start:start + 65_536]
        features[start:start + len(rows)] = centres[rows] + rng.standard_normal((len(rows), dim), dtype=np.float32)
    before = _peak_rss_mb()
    if way == "whole":
        grouping.KMEANS_SAMPLE = size
    started = time.perf_counter()
    labels = grouping.cluster_examples(features, GROUPS, seed=0)
    seconds = time.perf_counter() - started
    table = np.zeros((labels.max() + 1, GROUPS), dtype=np.int64)
    np.add.at(table, (labels, truth), 1)
    return {"size": size, "dim": dim, "way": way, "seconds": round(seconds, 2),
            "features_mb": round(features.nbytes / 2**20, 1), "peak_above_features_mb": round(max(_peak_rss_mb() - before, 0.0), 1),
            "purity": round(float(table.max(axis=1).sum() / size), 4), "sample": min(size, grouping.KMEANS_SAMPLE)}


def report(rows: list[dict], stamp: dict) -> str:
    lines = [
        "# Recovery groups against pool size",
        "",
        f"Made with `{stamp['command']}` at {stamp['commit']} ({stamp['total_seconds']} s in all). "
        f"{GROUPS} planted centres, float32 features; one fresh process per cell. `whole`: k-means on every row; "
        "`sampled`: k-means on the engine's sample, then every row to its nearest centre in batches. Peak: the "
        "process's peak RSS above what it held once the features were made.",
        "",
        "| rows | dim | way | k-means rows | seconds | features MB | peak above features MB | purity |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(f"| {row['size']:,} | {row['dim']} | {row['way']} | {row['sample']:,} | {row['seconds']:.1f} | "
                     f"{row['features_mb']:.0f} | {row['peak_above_features_mb']:.0f} | {row['purity']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--ways", nargs="+", default=["whole", "sampled"], choices=["whole", "sampled"])
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "WAY"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.dim, args.one[1])))
        return
    from benchmarks.classifier_study import write_study

    started, rows = time.perf_counter(), []
    for size in args.sizes:
        for way in args.ways:
            child = subprocess.run([sys.executable, "-m", "benchmarks.scale_groups", "--one", str(size), way, "--dim", str(args.dim)],
                                   capture_output=True, text=True, env=dict(os.environ))
            if child.returncode:
                rows.append({"size": size, "dim": args.dim, "way": way, "seconds": float("nan"), "features_mb": float("nan"),
                             "peak_above_features_mb": float("nan"), "purity": float("nan"), "sample": 0,
                             "failed": f"exit {child.returncode}"})
            else:
                rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    command = f"python -m benchmarks.scale_groups --sizes {' '.join(map(str, args.sizes))} --dim {args.dim}"
    write_study(args.out, rows, command, started, report)


if __name__ == "__main__":
    main()
