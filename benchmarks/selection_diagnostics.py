"""Why STRIDE's selections look as they do: diagnostics on the selection study's run (README, "Does
influence-based selection help?").

    python -m benchmarks.selection_diagnostics runs/select_pretraining_mix   # after `curate recipe ...yaml`

For the recipe's latest STRIDE run it reports:
- how domain-pure the recovery groups are (k-means of the model's own states; no labels used);
- the domain mix of the top 10% of documents for each target, decoded with the plain Lasso (λ = 0.1·λ_max, the
  default before grouped recovery) and with the run's grouped recovery;
- the same for the recipe's per-domain held-out items as queries (60 per domain), and how often a random 20 of
  the queries put their strongest group in their own domain (the mixed target's tales and Shakespeare parts have
  20 items; `benchmarks.target_size` measures how a selection sharpens with the number of items).
Writes benchmarks/results/selection_diagnostics.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl

from curate.proxy.retrain import max_positions
from curate.core.run import Run
from curate.core.targets import fit_to_window
from curate.studies.notes import keep_notes
from stride_engine import read_queries
from stride_engine.artifacts import atomic_write_text
from stride_engine.design import Membership
from stride_engine.groups import fit_group_effects, group_design
from stride_engine.recovery import RecoverySettings, recover
from stride_engine.scores import chunk_to_document

from .runner import commit

OUT = Path(__file__).parent / "results" / "selection_diagnostics.md"
SUBSETS, SUBSET_SIZE = 50, 20


def latest_run(study: Path) -> Path:
    """The selection study's latest fitted STRIDE run (runs/<recipe>/run-<settings>, with its recovery groups)."""
    fitted = [p for p in study.glob("run-*") if (p / "groups").is_dir()]
    return max(fitted, key=lambda p: (p / "stages" / "operators.json").stat().st_mtime)


def main(study: Path, out: Path = OUT) -> Path:
    made_at = commit()
    run_dir = latest_run(study)
    stride = Run(run_dir).engine
    chunks = pl.read_parquet(run_dir / "chunks.parquet")
    membership = Membership.load(run_dir / "design.npz").matrix
    groups = stride.groups()
    chunk_domain = chunks["domain"].to_numpy()
    doc_domain = chunks.group_by("doc_index").agg(pl.col("domain").first()).sort("doc_index")["domain"].to_numpy()
    domains = sorted(set(doc_domain))

    def top_mix(responses: np.ndarray, settings: RecoverySettings, grouped: bool) -> str:
        scores = np.concatenate([part[1] for part in recover(membership, responses, settings, groups=groups if grouped else None)])
        mean = chunk_to_document(scores, chunks["doc_index"].to_numpy(), len(doc_domain), "max").mean(0)
        top = doc_domain[np.argsort(-mean, kind="stable")[: len(doc_domain) // 10]]
        return ", ".join(f"{d} {int((top == d).sum())}" for d in domains)

    window = max_positions(stride.adapter.model.config) or 1 << 30

    def responses(path: Path, name: str) -> np.ndarray:
        return stride.responses(fit_to_window(read_queries(path), stride.tokenizer, window)[0], name=name, force=True)

    purity = pl.DataFrame({"group": groups, "domain": chunk_domain}).group_by("group", "domain").len()
    purity = purity.group_by("group").agg(pl.col("len").max()).select(pl.col("len").sum()).item() / len(groups)
    lasso = RecoverySettings(lambda_rule="fixed", lambda_fraction=0.1)  # the default before grouped recovery
    lines = [
        "# Selection study: diagnostics of STRIDE's run",
        "",
        f"Made by `python -m benchmarks.selection_diagnostics {study}` at commit {made_at}; run `{run_dir.name}`, "
        f"{len(groups)} chunks in {groups.max() + 1} groups, {purity:.1%} of chunks in their group's majority domain.",
        "",
        "## Results",  # the hand-written notes (curate.studies.notes) go before it
        "",
        "Domain mix of the top 10% of documents (mean score over the query set):",
        "",
        "| queries | plain Lasso | grouped recovery |",
        "| --- | --- | --- |",
    ]
    query_sets = {f"target {p.stem.removeprefix('target-')}": p for p in sorted((study / "data").glob("target-*.jsonl"))}
    query_sets |= {f"held-out {d}": study / "data" / f"heldout-{d}.jsonl" for d in domains}
    held_out = {}
    for label, path in query_sets.items():
        y = responses(path, "diag-" + label.replace(" ", "-"))
        if label.startswith("held-out"):
            held_out[label.split()[1]] = y
        lines.append(f"| {label} | {top_mix(y, lasso, False)} | {top_mix(y, stride.recovery_settings(), True)} |")

    design = group_design(membership, groups)
    majority = pl.DataFrame({"group": groups, "domain": chunk_domain}).group_by("group").agg(pl.col("domain").mode().first())
    group_domain = dict(majority.iter_rows())
    lines += ["", f"How often {SUBSETS} random {SUBSET_SIZE}-query subsets of a domain's held-out items (a long item is "
              "several queries, its windows) give the largest group effect (ridge on the group design, mean over the "
              "queries) to a group of their own domain:", "",
              "| domain | share |", "| --- | --- |"]
    rng = np.random.default_rng(0)
    for domain, y in held_out.items():
        hits = 0
        for _ in range(SUBSETS):
            part = y[rng.choice(len(y), min(SUBSET_SIZE, len(y) // 2), replace=False)]
            effects = fit_group_effects(design, (part - part.mean(1, keepdims=True)).T, stride.config.group_ridge).mean(1)
            hits += group_domain[int(np.argmax(effects))] == domain
        lines.append(f"| {domain} | {hits / SUBSETS:.0%} |")
    atomic_write_text(out, keep_notes(out, "\n".join(lines) + "\n", made_at))  # the notes of the file stay
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/select_pretraining_mix")))
