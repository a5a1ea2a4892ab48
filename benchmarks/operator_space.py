"""What a logit-form operator can carry at best, on the two classifiers: the exact influence in its parameter space.

In the logit form an operator edits the outputs by a_k · B(h), h the features entering the model's last layer and
B a rank-r basis shared by all operators. Trained on its members with the stability term (a KL to the base model on
non-members, whose second-order term is the Gauss-Newton matrix G of the last layer), an operator passes through two
regimes. After a few small steps it is the members' summed loss gradient in that space, and a query's response is
their dot product with its own gradient (first order, grad-dot restricted to the space). Trained to convergence in
the quadratic regime it is −G⁻¹ times that sum, and the response is an influence function in the space, damped by
whatever keeps G invertible. This study computes both exactly, per training example, with B the top-r principal
directions of the training features (a stand-in for the learned basis) plus a bias:

    first order:  s(q, i) = g_q · g_i
    converged:    s(q, i) = g_q · (G + δ·mean eig(G)·I)⁻¹ g_i        for several dampings δ

with g = (p − onehot(y)) ⊗ [B h, 1] the loss gradient in the space. Each is scored by LDS against the committed
retraining ground truth, as planted (what a perfect operator measures) and after the engine's own recovery from K
subset sums (the design of the benchmark's rows: K = 512, d = 8, λ = 0.1·λ_max), which is what a perfect operator
would give a user. No operator is trained: this bounds the logit form on these settings; it does not run STRIDE.

    python -m benchmarks.operator_space      # about 15 seconds on 2 cores

Writes benchmarks/results/operator_space.{json,md}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "operator_space.json"
SETTINGS = ("digits", "cancer")
RANKS = (8, 16, 64)  # 8: the benchmark's rows; 16: the converged rows; 64: every direction of the features
DAMPINGS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
SUBSETS, SEEDS = 512, (0, 1)


def main() -> None:
    from benchmarks.classifier_study import settings_with_truth, write_study
    from benchmarks.metrics import lds
    from benchmarks.recovery_ceiling import recovered
    from stride_engine.recovery import RecoverySettings

    started = time.perf_counter()
    recovery = RecoverySettings(solver="lasso", lambda_rule="fixed", lambda_fraction=0.1)
    rows = []
    for name, setting, truth in settings_with_truth(SETTINGS):
        train, queries = _features(setting)
        for rank in RANKS:
            for regime, damping, scores in _scores(train, queries, rank):
                planted = float(lds(scores, truth).mean())
                after = [float(lds(recovered(scores, SUBSETS, seed, recovery), truth).mean()) for seed in SEEDS]
                rows.append({"task": "operator-space", "setting": name, "rank": rank, "regime": regime,
                             "damping": damping, "lds_planted": planted, "lds_recovered": float(np.mean(after)),
                             "lds_recovered_per_seed": after, "subsets": SUBSETS})
                print(rows[-1], flush=True)
    write_study(RESULTS, rows, "python -m benchmarks.operator_space", started, report)


def _features(setting):
    """(features entering the last layer, softmax outputs, one-hot labels) of the training set and of the queries."""
    model = setting.model()
    body, head = model[:-1], model[-1]
    out = []
    with torch.no_grad():
        for examples in (setting.train, setting.queries):
            h = body(examples.tensors["x"])
            p = torch.softmax(head(h), -1)
            y = torch.nn.functional.one_hot(examples.tensors["y"], p.shape[1])
            out.append((h.double(), p.double(), y.double()))
    return out


def _scores(train, queries, rank: int, dampings: tuple[float, ...] = DAMPINGS):
    """(regime, damping, queries × train scores) for the first-order and converged operators at this rank."""
    (ht, pt, yt), (hq, pq, yq) = train, queries
    mean = ht.mean(0)
    directions = torch.linalg.svd(ht - mean, full_matrices=False)[2][:rank].T
    ones = lambda h: torch.ones(len(h), 1, dtype=torch.float64)
    bt = torch.cat([(ht - mean) @ directions, ones(ht)], 1)
    bq = torch.cat([(hq - mean) @ directions, ones(hq)], 1)
    gt = torch.einsum("nc,nd->ncd", pt - yt, bt).reshape(len(bt), -1)
    gq = torch.einsum("nc,nd->ncd", pq - yq, bq).reshape(len(bq), -1)
    yield "first order", None, (gq @ gt.T).numpy()
    # G = mean over training examples of (diag p − p pᵀ) ⊗ b bᵀ, the curvature the stability term's KL supplies
    curvature = torch.diag_embed(pt) - torch.einsum("nc,ne->nce", pt, pt)
    gram = torch.einsum("nce,nd,nf->cdef", curvature, bt, bt).reshape(gt.shape[1], gt.shape[1]) / len(bt)
    scale = torch.linalg.eigvalsh(gram).mean()
    for damping in dampings:
        solved = torch.linalg.solve(gram + damping * scale * torch.eye(len(gram), dtype=torch.float64), gt.T)
        yield "converged", damping, (gq @ solved).numpy()


def report(rows: list[dict], stamp: dict) -> str:
    lines = [f"# What a logit-form operator can carry at best on the classifiers\n\nMade by `{stamp['command']}` at "
             f"{stamp['commit']} ({stamp['total_seconds']:.0f} s). The exact influence in the logit form's parameter "
             "space (last layer, rank-r basis = top principal directions of its input features, plus a bias), first "
             "order and converged (inverse damped Gauss-Newton, damping δ × its mean eigenvalue); LDS against the "
             f"committed ground truth as planted and after the engine's recovery from K = {SUBSETS} subset sums "
             f"(d = 8, λ = 0.1·λ_max; mean of design seeds {', '.join(map(str, SEEDS))}). The module's docstring "
             "derives the two regimes.\n"]
    for name in SETTINGS:
        peers = _peers(name)
        lines += [f"\n## {name}\n", "Peers in [full.md](full.md): " + ", ".join(
            f"{m} {peers[m]:.3f}" for m in ("logra", "ekfac", "grad-dot") if m in peers) + ".\n",
            "| rank | regime | damping δ | LDS planted | LDS recovered |", "| ---: | --- | ---: | ---: | ---: |"]
        for r in (r for r in rows if r["setting"] == name):
            damping = "" if r["damping"] is None else f"{r['damping']:g}"
            lines.append(f"| {r['rank']} | {r['regime']} | {damping} | {r['lds_planted']:.3f} | {r['lds_recovered']:.3f} |")
    return "\n".join(lines) + "\n"


def _peers(setting: str) -> dict[str, float]:
    """The committed benchmark's LDS of each method on `setting` (results/full.json), for reference."""
    rows = json.loads((RESULTS.parent / "full.json").read_text())
    return {r["method"]: r["lds_mean"] for r in rows if r["setting"] == setting and r.get("status") == "ok"}


if __name__ == "__main__":
    main()
