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
(the operators trained on more of it raise those problems' loss), and the mixture it makes costs +0.23 bits per byte (tilt; +0.47 proportional).
It reads what the operators measure, sign included, so it is only as right as that measurement.

Hence the own-domain check (own_domain_check), which `--rule auto` runs first: the same regression with some of
each domain's own chunks as the queries, each held out of the subsets holding its document. On the demo corpus's run
every domain reads against its own text, as arithmetic does against arithmetic problems; on the study run they read
for it (benchmarks/results/reweight_own_domain.md). `auto` uses this reading only where the check passes, and the
per-document one elsewhere. The check is necessary, not sufficient: with a planted noise domain in the demo corpus it
passes, and the reading still cuts arithmetic for an arithmetic target.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse

from stride_engine.design import Membership
from stride_engine.groups import held_out_label_effects, label_effects

from ..core.run import Run
from ..core.targets import Target, part_sets
from ..errors import CurateError
from .weights import WHOLE_TARGET, DomainInfluence, check_domains

DOMAIN_REGRESSION = "domain-regression"
OWN_DOMAIN_QUERIES = 32  # chunks per domain in the own-domain check
TRUST_Z = 1.96  # the pooled z the own-domain check needs


def design_influence(run: Run, target: Target, documents: pl.DataFrame, by_part: bool) -> DomainInfluence:
    """Per domain (documents: doc_id, domain, tokens) and per part of the target (the whole first, then each part when
    `by_part`): the effect of one token on the target's mean response, and its standard error."""
    sets = part_sets(target)
    responses = {label: run.responses(name, queries) for label, (name, queries) in sets.items()}
    design = _design(run, documents)
    columns = {WHOLE_TARGET: np.concatenate(list(responses.values())).mean(axis=0)}
    if by_part:
        columns |= {label: values.mean(axis=0) for label, values in responses.items()}
    effects, errors = label_effects(design.membership, design.labels, design.tokens, np.column_stack(list(columns.values())))
    sums = design.sums
    return DomainInfluence(design.domains, sums["tokens"].to_numpy().astype(float), sums["documents"].to_numpy(),
                           tuple(columns), effects, errors)


def own_domain_check(run: Run, documents: pl.DataFrame, per_domain: int = OWN_DOMAIN_QUERIES, seed: int = 0) -> pl.DataFrame:
    """Per domain: what one more token of it does to its own training chunks, each held out of the subsets that hold
    its document, beyond what the domains do on average (domain, own_effect, standard_error, z).

    Training on more of a kind of text helps held-out text of that kind more than other kinds do, in any language model
    that learns. The `auto` reading trusts the design's domain-level reading (`domain-regression`) only when the run
    shows it, pooled over the domains (trusts_domain_reading). Costs one response per chosen chunk and operator (at
    most `per_domain` chunks per domain), kept in the run.
    """
    design = _design(run, documents)
    rng = np.random.default_rng([seed, 17])
    rows = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(design.labels == i), size=min(per_domain, int((design.labels == i).sum())), replace=False)
        for i in range(len(design.domains))]))
    digest = hashlib.sha1(json.dumps([design.domains, rows.tolist()]).encode()).hexdigest()[:8]
    responses = run.engine.example_responses(rows, name=f"own-domain-check-{digest}")
    doc_index = np.unique(design.chunks["doc_id"].to_numpy(), return_inverse=True)[1]
    effects, errors = held_out_label_effects(design.membership, design.labels, design.tokens, responses, rows, doc_index)
    return pl.DataFrame({"domain": list(design.domains), "own_effect": effects, "standard_error": errors, "z": effects / errors})


def trusts_domain_reading(check: pl.DataFrame) -> bool:
    """Whether the run's operators, pooled over the domains, read each domain as helping its own held-out text beyond
    noise: Stouffer's combination of the domains' z above TRUST_Z (one-sided, about 2.5% by chance).

    Pooled, not domain by domain: 32 chunks give one domain's z a spread of about ±1.5 across draws (the study run's
    Wikipedia domain reads −2.4 to −0.7 over three draws while its mixture is the best STRIDE has there), and a
    single noisy domain should not decide. Measured (benchmarks/results/reweight_own_domain.md): the pooled z is +3.5
    to +5.9 on the shared corpus's study run, whose domain-level mixtures beat natural, and −3.8 to −5.7 on the demo
    corpus's run, whose domain-level mixture costs +0.23 bits per byte (tilt); +4.3 to +8.6 on the demo corpus with a planted
    noise domain, where the domain-level reading is still wrong for an arithmetic target.
    """
    return pooled_z(check) > TRUST_Z


def pooled_z(check: pl.DataFrame) -> float:
    """Stouffer's combination of the own-domain check's z: their sum over the square root of their number."""
    z = check["z"].to_numpy()
    return float(z.sum() / np.sqrt(len(z)))


@dataclass(frozen=True)
class _Design:
    chunks: pl.DataFrame  # the run's chunk table in chunk order, with each chunk's domain
    domains: tuple[str, ...]
    labels: np.ndarray  # each chunk's domain, as an index into `domains`
    tokens: np.ndarray  # each chunk's tokens
    membership: scipy.sparse.csr_matrix
    sums: pl.DataFrame  # per domain: tokens, documents (check_domains)


def _design(run: Run, documents: pl.DataFrame) -> _Design:
    """The run's design and chunk table with each chunk's domain (documents: doc_id, domain, tokens)."""
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
    return _Design(chunks, domains, labels, tokens, membership, sums)
