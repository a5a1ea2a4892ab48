"""Mixture weights from per-domain influence: the rule `curate reweight` applies.

Per domain d and part p of the target, the influence per token is the domain's documents' summed influence over
its tokens, I[d, p] = sum(influence) / sum(tokens), with its standard error as a ratio estimator over the domain's
documents. Influence is positive where training on a document lowers the target's loss (the engine's sign), so a
domain whose tokens help more gets more weight:

    z[d, p]  = (I[d, p] - mean_d I[:, p]) / tau[p], shrunk by tau^2 / (tau^2 + se[d, p]^2)
               tau^2: the domains' spread beyond their standard errors (empirical Bayes; evidence_scores)
    score[d] = z[d, target]          mode "target": the whole target's queries
             = z of mean_p I[d, p]   mode "average": every part of the target an equal say (the parts' mean loss)
             = sum_p lambda_p z[d, p]  mode "worst": lambda puts its mass on the part the mixture serves worst
                                     (multiplicative weights over parts, as DoReMi / group DRO do)
    w[d]     ∝ w0[d] * exp(eta * score[d])                       w0: the natural (token-proportional) or uniform mixture
    w        = (1 - smoothing) * w + smoothing * w0             never far from the prior on weak evidence
    w        capped at max_epochs * tokens[d] / budget           UniMax: no domain repeated more than max_epochs times,
                                                                 the excess shared by the others in proportion

The scale makes eta unitless: eta = 1 multiplies the weight of a domain one (true) standard deviation above the
others by e before smoothing. Domains whose influence differs only by noise keep their prior weights, so the rule
cannot collapse onto one domain unless the evidence is far apart and the epoch cap allows it.

`weighting="proportional"` replaces the tilt (eta) with the optimum of a loss that is logarithmic in each domain's
share, L_p(w) = c_p - sum_d a[d, p] log w[d] (diminishing returns: the first tokens of a domain are worth most). The
influence was measured on a model trained on the corpus as it is, so the slope there fixes a[d, p] = I[d, p] *
tokens[d], and the loss's minimum on the simplex is w[d] = a[d, p] / sum_d a[d, p]: each domain's share of the
target's total influence. Negative influence is read as none (w[d] = 0 before smoothing). Mode "average" averages the
parts' optimal mixtures (every part an equal say); "worst" is not defined for it. A target that every domain helps
in proportion to its tokens leaves the weights natural, with no noise threshold: no eta, nothing to tune.

`guard` keeps the other domains in view. Each domain's own held-out loss read as the same kind of log law in the
shares, L_e(w) = c_e - sum_d b[d, e] log w[d], the domains' mean loss moves from the natural mixture w0 by

    M(w) = - sum_d m[d] log(w[d] / w0[d]),      m[d] = mean_e b[d, e]   (up to one unknown scale)

M is convex, zero at w0 and smallest at the shares m / sum(m). The guard takes the rule's mixture w and returns the
point of the segment from w to those shares nearest w where M <= 0: (1 - alpha) w + alpha m / sum(m), the least such
alpha. It is the target's log-law optimum under the constraint "the domains' mean loss no worse than natural's"
(the Lagrangian's stationary points are exactly that segment), and because the constraint's right side is zero it
needs no scale. Smoothing towards the natural prior afterwards keeps M <= 0 (M is convex); the epoch cap can move it a
little. What sets m:

- `macro`: every domain's loss falls alike with the log of its own share, b[d, e] = b if d = e else 0, so m is even
  and M <= 0 says: the weights' geometric mean is no lower than natural's. No measurement, any reading.
- `measured`: b[d, e] = max(a[d, e], 0), read like a[d, p] from every domain's dose on every domain's held-out chunks
  (the domain-operators reading only: curate.reweight.domain_operators). It reads the local slope at the reference
  model, and on the study's corpus that slope is small for Wikipedia (whose text the model already models broadly) while
  the proxies' Wikipedia loss explodes without Wikipedia: it let a GSM8K target cut Wikipedia to 0.10 and cost 1.6%
  of the macro bits per byte, where `macro` cost none (benchmarks/results/reweight_guard.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from ..errors import CurateError

MODES = ("target", "average", "worst")
PRIORS = ("natural", "uniform")
WEIGHTINGS = ("tilt", "proportional")
GUARDS = ("none", "macro", "measured")
WHOLE_TARGET = "target"  # the part name of the whole target's queries
WORST_TEMPERATURE = 0.25  # softness of "worst": lambda ∝ exp(-gain / T) over parts (gains in standard deviations)
WORST_ITERATIONS = 200


@dataclass(frozen=True)
class MixtureRule:
    eta: float = 1.0
    smoothing: float = 0.2
    max_epochs: float = 4.0
    mode: str = "target"
    prior: str = "natural"
    weighting: str = "proportional"  # or "tilt" (benchmarks/results/reweight_rule.md, docs/reweight.md)
    guard: str = "none"  # "macro": the domains' mean loss no worse than natural's (module docstring); "measured"

    def check(self) -> None:
        if not self.eta > 0:
            raise CurateError(f"eta must be > 0 (how far influence moves the weights), got {self.eta}")
        if not 0 <= self.smoothing <= 1:
            raise CurateError(f"smoothing is a share of the prior in [0, 1], got {self.smoothing}")
        if not self.max_epochs > 0:
            raise CurateError(f"max_epochs must be > 0, got {self.max_epochs}")
        if self.mode not in MODES:
            raise CurateError(f"mode {self.mode!r} is not one of {list(MODES)}")
        if self.prior not in PRIORS:
            raise CurateError(f"prior {self.prior!r} is not one of {list(PRIORS)}")
        if self.weighting not in WEIGHTINGS:
            raise CurateError(f"weighting {self.weighting!r} is not one of {list(WEIGHTINGS)}")
        if self.guard not in GUARDS:
            raise CurateError(f"guard {self.guard!r} is not one of {list(GUARDS)}")
        if self.weighting == "proportional" and self.mode == "worst":
            raise CurateError("mode worst needs --weighting tilt: the proportional weighting (the default) has no worst "
                              "mode, it averages the parts' optimal mixtures (--mode average)")


@dataclass(frozen=True)
class DomainInfluence:
    """Per domain: its tokens and documents, and per part of the target its influence per token and standard error."""

    domains: tuple[str, ...]
    tokens: np.ndarray  # (D,)
    documents: np.ndarray  # (D,)
    parts: tuple[str, ...]  # WHOLE_TARGET first, then the target's parts (if it has several)
    per_token: np.ndarray  # (D, P)
    standard_error: np.ndarray  # (D, P)
    # (D, D) or None: each domain's influence per token on each domain's own held-out text (rows: the dose, columns:
    # the text), which the measured guard reads; only the domain-operators reading measures it
    on_domains: np.ndarray | None = None

    def table(self) -> pl.DataFrame:
        return pl.DataFrame([
            {"domain": d, "part": p, "tokens": int(self.tokens[i]), "documents": int(self.documents[i]),
             "influence_per_token": float(self.per_token[i, j]), "standard_error": float(self.standard_error[i, j])}
            for i, d in enumerate(self.domains) for j, p in enumerate(self.parts)
        ])


def check_domains(documents: pl.DataFrame) -> pl.DataFrame:
    """Every document has a domain and every domain has tokens; returns per domain (sorted) its tokens and documents."""
    missing = documents.filter(pl.col("domain").is_null() | (pl.col("domain").cast(pl.String) == ""))
    if missing.height:
        raise CurateError(f"{missing.height} documents have no domain (e.g. {missing['doc_id'][0]!r}): every document needs one")
    grouped = documents.with_columns(pl.col("domain").cast(pl.String)).group_by("domain", maintain_order=False)
    sums = grouped.agg(pl.col("tokens").sum(), pl.len().alias("documents")).sort("domain")
    empty = sums.filter(pl.col("tokens") <= 0)
    if empty.height:
        raise CurateError(f"domain {empty['domain'][0]!r} has no tokens: drop it or check its documents' text")
    return sums


def domain_influence(documents: pl.DataFrame, influence_columns: dict[str, str]) -> DomainInfluence:
    """From one row per document (domain, tokens, and an influence column per part: {part: column}, the whole
    target under WHOLE_TARGET) to per-domain influence per token."""
    sums = check_domains(documents)
    domains = tuple(sums["domain"])
    tokens = sums["tokens"].to_numpy().astype(float)
    parts = tuple(influence_columns)
    per_token = np.zeros((len(domains), len(parts)))
    error = np.zeros_like(per_token)
    for j, part in enumerate(parts):
        column = influence_columns[part]
        for i, domain in enumerate(domains):
            rows = documents.filter(pl.col("domain").cast(pl.String) == domain)
            values, weights = rows[column].fill_null(0.0).to_numpy().astype(float), rows["tokens"].to_numpy().astype(float)
            ratio = values.sum() / weights.sum()
            per_token[i, j] = ratio
            # standard error of a ratio estimator over the domain's documents
            n = len(values)
            residual = values - ratio * weights
            error[i, j] = np.sqrt(n / max(n - 1, 1) * (residual ** 2).sum()) / weights.sum() if n > 1 else np.nan
    return DomainInfluence(domains, tokens, sums["documents"].to_numpy(), parts, per_token, error)


def prior_weights(tokens: np.ndarray, prior: str) -> np.ndarray:
    tokens = np.asarray(tokens, dtype=float)
    return tokens / tokens.sum() if prior == "natural" else np.full(len(tokens), 1.0 / len(tokens))


def evidence_scores(per_token: np.ndarray, standard_error: np.ndarray) -> np.ndarray:
    """Each domain's influence against the others', in units of the domains' true spread, shrunk by how sure it is.

    Empirical Bayes (James-Stein) per part: the spread of the domains' influence beyond what their standard errors
    explain, tau^2 = max(0, var_d(I) - mean_d(se^2)), and each domain's centred influence shrunk by
    tau^2 / (tau^2 + se_d^2), over tau. Domains that differ only by noise score ~0 (the prior stays); one that
    stands out by many standard errors scores its plain z."""
    centred = per_token - per_token.mean(axis=0, keepdims=True)
    errors = np.where(np.isfinite(standard_error), standard_error, np.nan)
    noise = np.nanmean(errors ** 2, axis=0, keepdims=True) if np.isfinite(errors).any() else np.zeros((1, per_token.shape[1]))
    noise = np.nan_to_num(noise)
    errors = np.where(np.isfinite(errors), errors, np.sqrt(noise))
    spread = centred.var(axis=0, ddof=1, keepdims=True) if len(per_token) > 1 else np.zeros((1, per_token.shape[1]))
    tau2 = np.maximum(spread - noise, 0.0)
    shrink = np.divide(tau2, tau2 + errors ** 2, out=np.zeros_like(centred), where=(tau2 + errors ** 2) > 0)
    return np.divide(shrink * centred, np.sqrt(tau2), out=np.zeros_like(centred), where=tau2 > 0)


def _tilted(prior: np.ndarray, score: np.ndarray, eta: float) -> np.ndarray:
    logits = np.log(prior) + eta * score
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def _worst_scores(prior: np.ndarray, z: np.ndarray, eta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-domain scores weighted towards the part the tilted mixture serves worst; returns (scores, lambda)."""
    weights = prior.copy()
    for _ in range(WORST_ITERATIONS):
        gains = weights @ z  # per part: how much the mixture leans to the domains that help it (in std units)
        mix = np.exp(-(gains - gains.min()) / WORST_TEMPERATURE)
        mix /= mix.sum()
        updated = _tilted(prior, z @ mix, eta)
        if np.abs(updated - weights).max() < 1e-10:
            break
        weights = 0.5 * weights + 0.5 * updated  # damped: the fixed point, not an oscillation between parts
    return z @ mix, mix


def cap_epochs(weights: np.ndarray, tokens: np.ndarray, budget_tokens: float, max_epochs: float) -> np.ndarray:
    """UniMax's cap: w[d] * budget <= max_epochs * tokens[d]; the excess goes to the uncapped domains in proportion."""
    caps = max_epochs * np.asarray(tokens, dtype=float) / budget_tokens
    if caps.sum() < 1 - 1e-9:
        raise CurateError(
            f"a budget of {budget_tokens:,.0f} tokens needs more than {max_epochs:g} epochs of the corpus "
            f"({np.sum(tokens):,.0f} tokens): lower the budget or raise the epoch cap (--max-epochs)"
        )
    weights = np.asarray(weights, dtype=float).copy()
    fixed = np.zeros(len(weights), dtype=bool)
    for _ in range(len(weights)):
        over = (~fixed) & (weights > caps + 1e-15)
        if not over.any():
            break
        weights[over] = caps[over]
        fixed |= over
        free = ~fixed
        left = 1.0 - weights[fixed].sum()
        if weights[free].sum() > 0:
            weights[free] *= left / weights[free].sum()
        else:  # every remaining domain had no weight: share what is left by their room under the cap
            weights[free] = left * caps[free] / caps[free].sum()
    return weights


def mixture_weights(influence: DomainInfluence, rule: MixtureRule, budget_tokens: float) -> dict[str, np.ndarray]:
    """The new mixture and what it came from: {"weights", "prior", "natural", "uniform", "score", "part_weights"}
    ("score": each domain's z under the tilt, its share of the influence under the proportional weighting)."""
    rule.check()
    if budget_tokens < 1:
        raise CurateError(f"the token budget must be at least 1 token, got {budget_tokens}")
    prior = prior_weights(influence.tokens, rule.prior)
    parts = list(influence.parts)
    own_parts = [j for j, p in enumerate(parts) if p != WHOLE_TARGET]
    whole = parts.index(WHOLE_TARGET) if WHOLE_TARGET in parts else 0
    part_weights = np.zeros(len(parts))
    if rule.weighting == "proportional":
        columns = own_parts if rule.mode == "average" and own_parts else [whole]
        score, helped = _influence_shares(influence, columns, prior)
        part_weights[columns] = 1.0 / len(columns)
        unhelped = [parts[j] for j, h in zip(columns, helped) if not h]
        unsmoothed = score
    else:
        z = evidence_scores(influence.per_token, influence.standard_error)
        if rule.mode == "target" or not own_parts:
            score = z[:, whole]
            part_weights[whole] = 1.0
        elif rule.mode == "average":
            # the gradient of the parts' mean loss: the parts' influence averaged in its own units (loss per token),
            # then scored like one target. A part whose loss the domains move most has most to gain, and keeps that say.
            mean = influence.per_token[:, own_parts].mean(axis=1, keepdims=True)
            error = np.sqrt((influence.standard_error[:, own_parts] ** 2).sum(axis=1, keepdims=True)) / len(own_parts)
            score = evidence_scores(mean, error)[:, 0]
            part_weights[own_parts] = 1.0 / len(own_parts)
        else:
            score, mix = _worst_scores(prior, z[:, own_parts], rule.eta)
            part_weights[own_parts] = mix
        unsmoothed = _tilted(prior, score, rule.eta)
        unhelped = []  # the tilt reads differences between domains, not their sign
    natural = prior_weights(influence.tokens, "natural")
    guard = None
    if rule.guard != "none":
        unsmoothed, guard = macro_guard(unsmoothed, guard_slopes(influence, rule.guard), natural)
    smoothed = (1 - rule.smoothing) * unsmoothed + rule.smoothing * prior
    weights = cap_epochs(smoothed, influence.tokens, budget_tokens, rule.max_epochs)
    return {"weights": weights, "prior": prior, "natural": natural,
            "uniform": prior_weights(influence.tokens, "uniform"), "score": score, "part_weights": part_weights,
            "guard": guard, "unhelped": unhelped}


def guard_slopes(influence: DomainInfluence, guard: str) -> np.ndarray:
    """m[d] of the module's docstring: how much the domains' mean loss gains per log of d's share."""
    if guard == "macro":
        return np.ones(len(influence.domains))
    if influence.on_domains is None:
        raise CurateError("the measured guard reads every domain's effect on the domains' own held-out text, which only "
                          "--rule domain-operators measures: use it, or --guard macro")
    texts = np.isfinite(influence.on_domains).all(axis=0)
    if not texts.any():
        raise CurateError("no domain has held-out text to guard (each needs a few documents more than its operators train on)")
    return (np.clip(influence.on_domains[:, texts], 0.0, None) * influence.tokens[:, None]).mean(axis=1)


def macro_guard(weights: np.ndarray, slopes: np.ndarray, natural: np.ndarray) -> tuple[np.ndarray, dict]:
    """The point (1 - alpha) * weights + alpha * m nearest `weights` (m: the slopes' shares) whose predicted change of
    the domains' mean loss, M(w) = -sum_d slopes[d] log(w[d] / natural[d]), is not above zero (the module's
    docstring); returns it and a record (alpha, m, M before and after as a mean log ratio weighted by m; None before
    where the rule's mixture gives a domain none)."""
    if slopes.sum() <= 0:  # no domain's dose helps any domain's own text: nothing to read
        return weights, {"alpha": 0.0, "shares": [0.0] * len(slopes), "predicted_before": 0.0, "predicted_after": 0.0,
                         "note": "no dose lowers any domain's held-out loss: nothing to guard"}
    shares = slopes / slopes.sum()

    def change(alpha: float) -> float:
        mixed = (1 - alpha) * weights + alpha * shares
        with np.errstate(divide="ignore"):
            logs = np.where(slopes > 0, np.log(mixed / natural), 0.0)
        return float(-(shares * logs).sum())

    low, high = 0.0, 1.0
    if change(0.0) > 0:
        for _ in range(60):  # M is convex along the segment, positive at 0 and at most 0 at 1: one crossing
            middle = (low + high) / 2
            low, high = (low, middle) if change(middle) <= 0 else (middle, high)
        alpha = high
    else:
        alpha = 0.0
    guarded = (1 - alpha) * weights + alpha * shares
    before = change(0.0)  # infinite where the rule's mixture leaves out a domain the others' mean loss needs
    return guarded, {"alpha": alpha, "shares": shares.tolist(), "predicted_before": before if np.isfinite(before) else None,
                     "predicted_after": change(alpha)}


def _influence_shares(influence: DomainInfluence, columns: list[int], prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each domain's share of the target's total positive influence (the log-law optimum; see the module's docstring)
    in each of `columns`, averaged over them; and whether any domain helps each column."""
    total = np.clip(influence.per_token[:, columns], 0.0, None) * influence.tokens[:, None]
    sums = total.sum(axis=0, keepdims=True)
    # a part that no domain helps has no optimum of its own: it keeps the prior, for want of anything to move it by
    shares = np.where(sums > 0, total / np.where(sums > 0, sums, 1.0), prior[:, None])
    return shares.mean(axis=1), sums[0] > 0


def check_user_weights(weights: dict[str, float], domains: tuple[str, ...]) -> np.ndarray:
    """A mixture a user gives (domain -> weight): every domain named, none negative, summing to one."""
    unknown = set(weights) - set(domains)
    if unknown:
        raise CurateError(f"the mixture names domains the corpus does not have: {sorted(unknown)} (it has {list(domains)})")
    absent = [d for d in domains if d not in weights]
    if absent:
        raise CurateError(f"the mixture gives no weight for domains {absent}")
    values = np.array([float(weights[d]) for d in domains])
    if (values < 0).any():
        raise CurateError(f"mixture weights must be >= 0, got {dict(zip(domains, values.tolist()))}")
    if abs(values.sum() - 1) > 1e-6:
        raise CurateError(f"mixture weights must sum to 1, they sum to {values.sum():.6g}")
    return values
