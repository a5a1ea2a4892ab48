"""How long measuring a query set's responses takes in the logit form, row by row against at scored positions.

Measuring is Q × K steered evaluations of every scored position over the whole vocabulary, so its cost grows with
K: at K = 1,024 it took most of a pre-training row's time in `full.md`. The engine measures the logit form's full
bank at the scored positions only, a chunk of operators per matrix product (stride_engine/responses.py); the row by
row path (one (query, operator) pair per row through `steered_logits`) is what every other form and adapter uses.
Both run here on the pre-training setting's model and queries with a seeded random bank, paired (alternating, the
same process), and their responses are compared.

    python -m benchmarks.response_speed                     # about 10 minutes on 2 cores

Writes benchmarks/results/response_speed.{json,md}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "response_speed.json"
OPERATORS = (256, 1024)
QUERIES = 32  # of the setting's 160: the row-by-row path takes about 8 s per query at K = 1,024 here
RANK = 8
REPEATS = 2


def _bank(num_operators: int, features: int, outputs: int, seed: int):
    from stride_engine.operators import SteeringBank

    torch.manual_seed(seed)
    bank = SteeringBank(num_operators, features, outputs, RANK)
    with torch.no_grad():
        bank.coefficients.normal_(0, 0.05)  # trained a_k are this size on the benchmark's LMs
    return bank.eval()


def main() -> None:
    import stride_engine.responses as responses
    from stride_engine.artifacts import atomic_write_text

    from .methods.stride import _examples
    from .runner import commit, machine
    from .settings import build_setting

    torch.set_num_threads(2)
    setting = build_setting("pretrain", "full")
    adapter = setting.adapter()
    queries = _examples(setting.queries).batch
    queries = {key: value[:QUERIES] for key, value in queries.items()}
    with torch.no_grad():
        states = adapter.capture(queries, "logit", 0)
        outputs = adapter.finish(states[:1], {k: v[:1] for k, v in queries.items()}, "logit", 0).shape[-1]
    scored = float(adapter.scored_outputs(states, queries)[2].gt(0).float().mean())
    fast_path = responses._scored_positions
    rows = []
    for num_operators in OPERATORS:
        bank = _bank(num_operators, states.shape[-1], outputs, seed=0)
        seconds = {"row by row": [], "scored positions": []}
        values = {}
        for _ in range(REPEATS):
            for path in seconds:
                responses._scored_positions = fast_path if path == "scored positions" else (lambda *args: None)
                start = time.perf_counter()
                values[path], _ = responses.measure_responses(adapter, bank, queries, "logit", 0, 64, progress=False)
                seconds[path].append(time.perf_counter() - start)
        responses._scored_positions = fast_path
        slow, fast = values["row by row"], values["scored positions"]
        rows.append({
            "operators": num_operators, "queries": QUERIES, "positions": int(states.shape[1]), "vocabulary": outputs,
            "scored_share": round(scored, 3), "seconds": {k: [round(s, 2) for s in v] for k, v in seconds.items()},
            "speedup": round(min(seconds["row by row"]) / min(seconds["scored positions"]), 2),
            "max_abs_difference": float(np.abs(fast - slow).max()), "max_abs_response": float(np.abs(slow).max()),
            "commit": commit(), "machine": machine(),
        })
        print(f"[speed] K={num_operators}: {rows[-1]['seconds']} speed-up {rows[-1]['speedup']}", flush=True)
    atomic_write_text(RESULTS, json.dumps(rows, indent=1) + "\n")
    atomic_write_text(RESULTS.with_suffix(".md"), report(rows))


def report(rows: list[dict]) -> str:
    first = rows[0]
    lines = [
        "# Measuring responses: row by row against at scored positions (logit form, full bank)",
        "",
        f"Made by `python -m benchmarks.response_speed` at commit {first['commit']} ({first['machine']['cpus']} CPUs, "
        f"torch {first['machine']['torch']}). The pre-training setting's model (vocabulary {first['vocabulary']}), its "
        f"first {first['queries']} queries ({first['positions']} positions each, {first['scored_share']:.0%} of them "
        f"scored), a seeded random bank of rank {RANK}; each path {REPEATS} times, alternating, in one process.",
        "",
        "| K | row by row (s) | scored positions (s) | speed-up (best of each) | largest difference / largest response |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        slow, fast = row["seconds"]["row by row"], row["seconds"]["scored positions"]
        lines.append(f"| {row['operators']} | {' / '.join(f'{s:.1f}' for s in slow)} | {' / '.join(f'{s:.1f}' for s in fast)} "
                     f"| {row['speedup']:.1f}× | {row['max_abs_difference'] / row['max_abs_response']:.1e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
