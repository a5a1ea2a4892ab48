"""Per-domain influence read straight off STRIDE's design: the `domain-regression` reading (`--rule domain-regression`).

STRIDE trains one operator per random subset of the chunks and measures how far each moves the target's loss. Every
subset holds a slightly different share of each domain's tokens, so regressing the target's mean response on the
tokens each subset holds of each domain (stride_engine.groups.label_effects) gives what one more token of a domain
does to the target: the derivative a mixture needs, with a standard error from the regression's residuals.

Why it exists beside the per-document scores summed per domain (the other rules): a domain's effect is dense (every
arithmetic word problem helps a GSM8K item a little), which the sparse recovery is not built to see, and their
standard errors across documents say nothing of the recovery's own noise. Where it stands (benchmarks/results/
reweight_rule.md, reweight_demo.md): on the shared corpus it gives each part of the mixed target its own domain and
the best STRIDE mixture there; on the demo corpus it reads the arithmetic domain as harmful to arithmetic problems
(the operators trained on more of it raise those problems' loss), and the mixture it makes costs +0.23 bits per byte.
It reads what the operators measure, sign included, so it is only as right as that measurement: an option, not
the default.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from stride_engine.design import Membership
from stride_engine.groups import label_effects

from ..core.run import Run
from ..core.targets import Target, part_sets
from ..errors import CurateError
from .weights import WHOLE_TARGET, DomainInfluence, check_domains

DOMAIN_REGRESSION = "domain-regression"


def design_influence(run: Run, target: Target, documents: pl.DataFrame, by_part: bool) -> DomainInfluence:
    """Per domain (documents: doc_id, domain, tokens) and per part of the target (the whole first, then each part when
    `by_part`): the effect of one token on the target's mean response, and its standard error."""
    sets = part_sets(target)
    responses = {label: run.responses(name, queries) for label, (name, queries) in sets.items()}
    chunks = run.chunks().sort("chunk_id").join(documents.select("doc_id", "domain"), on="doc_id", how="left")
    if chunks["domain"].null_count():
        raise CurateError(f"{chunks['domain'].null_count()} chunks of run {run.root} belong to no document with a domain")
    sums = check_domains(documents)
    domains = tuple(sums["domain"])
    labels = chunks["domain"].replace_strict({d: i for i, d in enumerate(domains)}, return_dtype=pl.Int64).to_numpy()
    tokens = (chunks["token_end"] - chunks["token_start"]).to_numpy()
    membership = Membership.load(run.root / "design.npz").matrix
    if membership.shape[1] != len(chunks):
        raise CurateError(f"run {run.root}: its design has {membership.shape[1]} examples and its chunk table "
                          f"{len(chunks)}; refit the run")
    columns = {WHOLE_TARGET: np.concatenate(list(responses.values())).mean(axis=0)}
    if by_part:
        columns |= {label: values.mean(axis=0) for label, values in responses.items()}
    effects, errors = label_effects(membership, labels, tokens, np.column_stack(list(columns.values())))
    return DomainInfluence(domains, sums["tokens"].to_numpy().astype(float), sums["documents"].to_numpy(),
                           tuple(columns), effects, errors)

