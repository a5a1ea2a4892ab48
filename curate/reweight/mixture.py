"""A run's documents grouped into domains, their influence on the target, and the mixture the rule makes of it.

    check_mixture      every check that needs no attribution (the submitting process runs it before OUT exists)
    domain_documents   one row per training document: doc_id, domain, tokens, influence (and per part of the target)
    compute_mixture    the weights record that OUT/weights.json holds (curate.reweight.weights has the rule)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..core.budget import PART_SCORE
from ..core.influence import influence_table
from ..core.run import Run
from ..core.targets import Target, target_for_run
from ..errors import CurateError
from .domain_operators import DOMAIN_OPERATORS, operator_influence
from .domain_effects import DOMAIN_REGRESSION, design_influence, own_domain_check, pooled_z, trusts_domain_reading
from .request import AUTO, AUTO_FALLBACK, GROUPS_AS_DOMAINS, ReweightRequest
from .weights import (WHOLE_TARGET, DomainInfluence, cap_epochs, check_user_weights, domain_influence, mixture_weights,
                      prior_weights)

_TOKENS = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<scale>[kmb]?)\s*(-?\s*tokens?)?\s*$", re.I)
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def parse_tokens(text: str | None, corpus_tokens: int) -> int:
    """'50M', '2.5B-tokens', '120000'; None: the corpus's own size (a mixture at equal tokens)."""
    if text is None:
        return corpus_tokens
    match = _TOKENS.match(str(text))
    if not match:
        raise CurateError(f"token budget {text!r} is not understood; write e.g. '50M', '2.5B' or '120000'")
    value = float(match["number"]) * _SCALE[match["scale"].lower()]
    if value < 1:
        raise CurateError(f"token budget {text!r} is smaller than one token")
    return int(value)


@dataclass(frozen=True)
class DomainReading:
    """What a reweighting read of the run: every training document with its domain and tokens (and, for an aggregation
    of per-document scores, its influence on the whole target and on each part); the per-domain influence those come
    to; the target's name in the run (it carries the digest of the target's items); the reading used (`auto`
    resolved); and the own-domain check that decided it (curate.reweight.domain_effects.own_domain_check)."""

    documents: pl.DataFrame
    influence: DomainInfluence | None = None  # None for a given mixture
    target_name: str | None = None
    rule: str | None = None
    own_domain_check: pl.DataFrame | None = None


def documents_with_domains(run: Run, request: ReweightRequest) -> pl.DataFrame:
    """doc_id, tokens, domain (the request's field, or the run's group) and group of every training document."""
    table = run.document_tokens().join(run.document_domains(), on="doc_id", how="left")
    groups = run.document_groups()
    table = table.join(groups, on="doc_id", how="left") if groups is not None else table.with_columns(group=pl.lit(None, dtype=pl.Int64))
    table = table.sort("doc_id")  # one order for the table and the domains computed from it
    return table.with_columns(_domains(run, request, table).alias("domain"))


def request_target(run: Run, request: ReweightRequest) -> tuple[Target, bool]:
    """The target in the run and whether it has several parts, checked against the mode."""
    target = target_for_run(run, request.target, [Path(d) for d in request.task_dirs], request.target_limit, request.part_field)
    by_part = len(dict.fromkeys(target.parts)) > 1
    if request.mode != "target" and not by_part:
        raise CurateError(f"mode {request.mode!r} weighs the target's parts, and target {request.target} has one part: "
                          f"give its items a {request.part_field!r} field, or use --mode target")
    return target, by_part


def check_mixture(run: Run, request: ReweightRequest) -> tuple[pl.DataFrame, bool]:
    """Everything about the data, the budget and the target that needs no attribution: a domain missing on some
    documents, a domain without tokens, a budget the epoch cap cannot hold, a bad given mixture, a target without
    items or with one part for a mode that weighs parts. Returns the documents with their domains and whether the
    target has several parts (False for a given mixture)."""
    documents = documents_with_domains(run, request)
    influence = domain_influence(documents, {})
    budget = parse_tokens(request.tokens, int(influence.tokens.sum()))
    if request.weights is not None:
        given_mixture(request.weights, influence, budget)
        return documents, False
    cap_epochs(prior_weights(influence.tokens, request.prior), influence.tokens, budget, request.max_epochs)
    return documents, request_target(run, request)[1]


def domain_documents(run: Run, request: ReweightRequest) -> DomainReading:
    stride = request.method == "stride"
    if request.weights is not None or (stride and request.rule in (AUTO, DOMAIN_REGRESSION, DOMAIN_OPERATORS)):
        table = documents_with_domains(run, request)
        if request.weights is not None:
            return DomainReading(table)
    target, by_part = request_target(run, request)
    rule, check = request.rule, None
    if rule == AUTO and stride:
        check = own_domain_check(run, table)
        rule = DOMAIN_REGRESSION if trusts_domain_reading(check) else AUTO_FALLBACK
    elif rule == AUTO:  # a baseline's scores are per document: nothing to read off the design
        rule = AUTO_FALLBACK
    if rule == DOMAIN_REGRESSION:
        return DomainReading(table, design_influence(run, target, table, by_part), target.name, rule, check)
    if rule == DOMAIN_OPERATORS:
        return DomainReading(table, operator_influence(run, target, table, by_part), target.name, rule, check)
    table = influence_table(run, request.target, rule, 10, [Path(d) for d in request.task_dirs], request.target_limit,
                            method=request.method, by_part=by_part, part_field=request.part_field)
    table = table.with_columns(_domains(run, request, table).alias("domain"))
    columns = {WHOLE_TARGET: "influence"}
    if by_part:
        columns |= {p: PART_SCORE + p for p in dict.fromkeys(target.parts)}
    return DomainReading(table, domain_influence(table, columns), target.name, rule, check)


def _domains(run: Run, request: ReweightRequest, table: pl.DataFrame) -> pl.Series:
    if request.domain_field == GROUPS_AS_DOMAINS:
        if table["group"].null_count() == len(table):
            raise CurateError("--domain-field groups uses the run's recovery groups, and this run has none: rescore it "
                              "with groups (curate fit ... --set groups=16 --overwrite keeps its operators)")
        return table["group"].cast(pl.String).map_elements(lambda g: f"group-{g}", return_dtype=pl.String)
    if request.domain_field == run.config.domain_field:
        domains = table["domain"]
    else:  # another field of the corpus's records than the run read as its domain
        from stride_engine import read_documents

        documents = read_documents(run.inputs.train, run.config.text_field, run.config.id_field, request.domain_field)
        by_id = dict(zip(documents.ids, documents.domains))
        domains = pl.Series([by_id.get(d) for d in table["doc_id"]], dtype=pl.String)
    missing = int(domains.is_null().sum())
    if missing:
        example = table["doc_id"][int(np.flatnonzero(domains.is_null().to_numpy())[0])]
        raise CurateError(f"{missing} of {len(table)} documents have no {request.domain_field!r} field (e.g. {example!r}): "
                          "every document needs a domain (or use --domain-field groups)")
    return domains.cast(pl.String)


def compute_mixture(request: ReweightRequest) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame]:
    """The weights record (OUT/weights.json), the per-domain, per-part influence table (OUT/domains.parquet), and the
    documents with their domains it came from."""
    run = Run(request.run)
    reading = domain_documents(run, request)
    documents, influence, target_name = reading.documents, reading.influence, reading.target_name
    if influence is None:
        influence = domain_influence(documents, {})
    budget = parse_tokens(request.tokens, int(influence.tokens.sum()))
    rule = request.mixture_rule()
    if request.weights is not None:
        made = given_mixture(request.weights, influence, budget)
    else:
        made = mixture_weights(influence, rule, budget)
    whole = list(influence.parts).index(WHOLE_TARGET) if WHOLE_TARGET in influence.parts else None
    domains = []
    for i, domain in enumerate(influence.domains):
        weight = float(made["weights"][i])
        row = {
            "domain": domain, "documents": int(influence.documents[i]), "tokens": int(influence.tokens[i]),
            "natural": float(made["natural"][i]), "uniform": float(made["uniform"][i]), "weight": weight,
            "tokens_at_budget": weight * budget, "epochs": weight * budget / float(influence.tokens[i]),
        }
        if whole is not None:
            row |= {"influence_per_token": float(influence.per_token[i, whole]),
                    "standard_error": float(influence.standard_error[i, whole]), "score": float(made["score"][i])}
        domains.append(row)
    given = request.weights is not None
    record = {
        "method": "given" if given else f"{request.method}-influence" if request.method != "stride" else "stride-influence",
        "rule": None if given else {**rule.__dict__}, "aggregation": reading.rule,
        "requested_aggregation": None if given else request.rule,
        "own_domain_check": None if reading.own_domain_check is None else {
            "domains": reading.own_domain_check.to_dicts(), "pooled_z": pooled_z(reading.own_domain_check),
            "trusted": reading.rule == DOMAIN_REGRESSION},
        "budget_tokens": budget, "corpus_tokens": int(influence.tokens.sum()), "domains": domains,
        "parts": {p: float(w) for p, w in zip(influence.parts, made["part_weights"])}, "guard": made.get("guard"),
        "unhelped_parts": made.get("unhelped", []),
        "run": str(Path(request.run).resolve()), "target": request.target, "target_run_name": target_name,
        "model": str(run.inputs.model), "domain_field": request.domain_field,
    }
    return record, influence.table(), documents


def given_mixture(weights: dict[str, float], influence: DomainInfluence, budget: int) -> dict[str, np.ndarray]:
    """A user's mixture, checked (every domain named, a distribution) and held to nothing else: its epochs are
    reported, not capped (a mixture from another method is applied as it is)."""
    values = check_user_weights(weights, influence.domains)
    return {"weights": values, "natural": prior_weights(influence.tokens, "natural"),
            "uniform": prior_weights(influence.tokens, "uniform"), "part_weights": np.zeros(0)}
