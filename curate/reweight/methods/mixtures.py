"""Mixtures that need no model: the simplex grid (the oracle's search space), UniMax, and RegMix's random mixtures.

A mixture is a vector of weights over the corpus's domains (in the order of `domains`), summing to one.
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np

from ..weights import cap_epochs


def simplex_grid(domains: int, divisions: int) -> np.ndarray:
    """Every mixture whose weights are multiples of 1/divisions: C(divisions + domains - 1, domains - 1) of them
    (35 for 4 domains in quarters, 56 in fifths), the vertices (one domain alone) included."""
    points = [
        np.array(counts, dtype=float) / divisions
        for counts in itertools.product(range(divisions + 1), repeat=domains) if sum(counts) == divisions
    ]
    return np.stack(points)


def unimax(tokens: np.ndarray, budget_tokens: float, max_epochs: float) -> np.ndarray:
    """UniMax (Chung et al. 2023): the budget shared uniformly across domains, none repeated more than max_epochs
    times; what a capped domain cannot take goes to the others, uniformly (the paper's allocation loop)."""
    uniform = np.full(len(tokens), 1.0 / len(tokens))
    return cap_epochs(uniform, tokens, budget_tokens, max_epochs)


# RegMix's sampler (sail-sg/regmix, mixture_config/synthesize_mixture.py): Dirichlet draws around the token
# distribution raised to a temperature, at concentrations spread log-uniformly, rejected where a domain would be
# repeated beyond a bound, small weights zeroed and the rest rounded.
REGMIX_TEMPERATURE = 0.5
REGMIX_STRENGTHS = np.logspace(np.log10(0.1), np.log10(5.0), 15)
REGMIX_MINIMUM = 1e-3  # their 2e-4 assumes 1B proxy tokens; ours see ~300k, so a domain below 0.1% is noise


def dirichlet_mixtures(prior: np.ndarray, count: int, seed: int, max_usage: float | None = None) -> np.ndarray:
    """`count` distinct random mixtures around `prior` (RegMix's sampler); max_usage bounds w[d] <= prior[d] * max_usage."""
    rng = np.random.default_rng(seed)
    prior = np.asarray(prior, dtype=float)
    bound = np.minimum(prior * max_usage, 1.0) if max_usage else np.ones_like(prior)
    smoothed = prior ** REGMIX_TEMPERATURE
    smoothed /= smoothed.sum()
    found: dict[bytes, np.ndarray] = {}
    for _ in range(count * 1000):
        sample = rng.dirichlet(smoothed * rng.choice(REGMIX_STRENGTHS))
        if (sample > bound).any():
            continue
        sample = np.where(sample < REGMIX_MINIMUM, 0.0, sample)
        sample = np.round(sample / sample.sum() / REGMIX_MINIMUM) * REGMIX_MINIMUM
        sample /= sample.sum()
        found.setdefault(np.round(sample, 6).tobytes(), sample)
        if len(found) == count:
            break
    return np.stack(list(found.values()))


def mixture_key(weights: np.ndarray) -> str:
    """A short name for a mixture: the same weights (to 4 decimals) give the same name, so two methods that find the
    same mixture share its dataset and proxies."""
    rounded = ",".join(f"{w:.4f}" for w in np.asarray(weights, dtype=float))
    return hashlib.sha1(rounded.encode()).hexdigest()[:10]
