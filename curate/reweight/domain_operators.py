"""Per-domain influence from operators trained on whole domains: the `domain-operators` reading
(`--rule domain-operators`).

The other readings take STRIDE's random-subset operators, each fitted on a few dozen chunks, and sum their per-chunk
evidence per domain. That answers "which chunks helped", and it reads a domain the way its chunks' specifics read:
on the demo corpus's templated arithmetic, an operator fitted to twenty problems raises the loss of the others, so the
arithmetic domain reads as harmful to arithmetic problems (benchmarks/results/reweight_null.md). A mixture question is
about a dose of a whole domain, so this reading asks it directly: on the run's frozen model, REPLICATES operators
per domain, each fitted on all of the domain's chunks while the stability term holds the model's predictions on the
other domains' chunks (stride_engine.label_operators), and the target's loss change under each. Its cost is a few
hundred steps of a bank of domains x REPLICATES operators, kept in the run (label-operators/).

The response r[d] (the target's mean loss drop under domain d's operators) is the effect of one equal dose of d's
text. The proportional weighting's log-law loss, L(w) = c - sum_d a[d] log w[d], has d's marginal effect at the
natural mixture w0 equal to a[d] / w0[d] per unit of share, so a[d] = w0[d] * r[d]: the reading reports
r[d] / (corpus tokens) as the influence per token, whose product with d's tokens is a[d] up to one constant. The
standard error is the replicates' spread. What it measured: benchmarks/results/reweight_operators.md.

HELD_OUT chunks of every domain (whole documents) are kept out of the bank's training, and every domain's dose is
measured on them too: r[d, e], what a dose of d does to unseen text of domain e. That is what the measured guard
(curate.reweight.weights, `--guard measured`) reads to keep a mixture from buying the target's gain with the other
domains' loss.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from stride_engine.label_operators import LabelOperators

from ..core.run import Run
from ..core.targets import Target, part_sets
from .domain_effects import _design
from .weights import WHOLE_TARGET, DomainInfluence

DOMAIN_OPERATORS = "domain-operators"
REPLICATES = 4  # operators per domain: their spread is the reading's standard error
STEPS = 200  # optimiser steps of the domain bank (every operator every step)
ROWS_PER_OPERATOR = 8  # member rows per operator and step: the dose is STEPS x this, the same for every domain
HELD_OUT = 32  # chunks per domain kept out of the bank's training: the domains' own unseen text (at most a quarter)


def operator_influence(run: Run, target: Target, documents: pl.DataFrame, by_part: bool) -> DomainInfluence:
    """Per domain (documents: doc_id, domain, tokens) and per part of the target (the whole first, then each part when
    `by_part`): its dose's loss drop on the target over the corpus's tokens, and the replicates' standard error."""
    design = _design(run, documents)
    bank = LabelOperators.fit(run.engine, [design.domains[i] for i in design.labels], REPLICATES, STEPS, ROWS_PER_OPERATOR,
                              held_out=HELD_OUT)
    order = [bank.labels.index(d) for d in design.domains]
    per_part = {label: bank.responses(queries, name).replicates[:, order] for label, (name, queries) in part_sets(target).items()}
    columns = {WHOLE_TARGET: np.concatenate(list(per_part.values())).mean(axis=0)}  # (D, R): the mean over queries
    if by_part:
        columns |= {label: values.mean(axis=0) for label, values in per_part.items()}
    corpus_tokens = float(design.tokens.sum())
    means = np.column_stack([values.mean(axis=1) for values in columns.values()]) / corpus_tokens
    errors = np.column_stack([values.std(axis=1, ddof=1) / np.sqrt(values.shape[1]) for values in columns.values()]) / corpus_tokens
    sums = design.sums
    return DomainInfluence(design.domains, sums["tokens"].to_numpy().astype(float), sums["documents"].to_numpy(),
                           tuple(columns), means, errors, _on_domains(bank, order, design.domains) / corpus_tokens)


def _on_domains(bank: LabelOperators, order: list[int], domains: tuple[str, ...]) -> np.ndarray:
    """(D, D): each domain's dose (rows) on each domain's held-out chunks (columns), the mean over those chunks and
    the replicates; a domain with no held-out chunk (too few documents) gets a column of NaN."""
    measured = bank.held_out_responses()
    text = np.asarray(measured.query_ids)
    effects = measured.mean[:, order]  # (held-out chunks, D)
    return np.column_stack([effects[text == d].mean(axis=0) if (text == d).any() else np.full(len(domains), np.nan)
                            for d in domains])
