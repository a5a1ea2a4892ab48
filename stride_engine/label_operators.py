"""Operators trained on whole labels (a domain, a source) instead of random subsets: how far a dose of more training
on each label's text moves each query's measurement.

STRIDE's design gives every operator a few dozen random examples, which is what recovering one example's influence
needs. A question about a kind of text (would more Wikipedia help this target?) is a question about a dose of that
label's text, and a few dozen examples measure their own specifics more than their label's: on a model trained to
convergence on templated text, an operator fitted to twenty arithmetic problems raises the loss of the other
arithmetic problems (benchmarks/results/reweight_null.md). Here every operator holds all of one label's examples, and
the stability term holds the model's predictions on the other labels' examples, so an operator learns what its label
has that the rest of the corpus does not; `replicates` operators per label (their own initialisation and row draws)
give the spread of that reading. Every operator trains on the same number of member rows, so a label's response is the
effect of an equal dose of its text. The linearity term, which serves the random design's recovery, is off.

Why the stability term stays on (measured on the reweighting study's run and the demo run, docs/reweight.md): without
it every label's operator drifts and raises every target's loss, which reads as "no domain helps" wherever only the
sign is kept; with it the operator of the target's own domain stands out (Wikipedia for a Wikipedia topic).

    bank = LabelOperators.fit(stride, labels, replicates=4, steps=200)
    responses = bank.responses(queries)        # LabelResponses: per query and label, the mean over replicates

Kept in the run under label-operators/<fingerprint>/ (the bank, its membership and curves; each query set's responses
beside them), keyed by what they were built from: the run's operators (its model and chunks), the labels, the
settings. A rerun with the same inputs reads them back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.torch import save_file

from .artifacts import atomic_path, remove_path
from .design import Membership
from .errors import ConfigError
from .operators import SteeringBank
from .responses import measure_responses

if TYPE_CHECKING:
    from .corpus import Queries
    from .stride import Examples, Stride

FOLDER = "label-operators"


@dataclass(frozen=True)
class LabelResponses:
    """Per query and label: the mean response over the label's replicates (base - steered measurement: positive where
    more of the label's text lowers the query's loss), its standard error, and each replicate's response."""

    labels: tuple[str, ...]
    query_ids: tuple[str, ...]
    mean: np.ndarray  # (Q, L)
    standard_error: np.ndarray  # (Q, L)
    replicates: np.ndarray  # (Q, L, R)


def label_membership(labels: Sequence[str], replicates: int, seed: int) -> tuple[Membership, tuple[str, ...]]:
    """Operators l * replicates ... l * replicates + replicates - 1 each hold every example of label l (the labels
    sorted); returns the membership (K = labels x replicates) and the labels in order."""
    labels = np.asarray([str(label) for label in labels])
    names = tuple(sorted(set(labels)))
    if len(names) < 2:
        raise ConfigError(f"label operators need at least two labels to compare, got {list(names)}")
    if replicates < 2:
        raise ConfigError(f"replicates must be >= 2 (their spread is the standard error), got {replicates}")
    rows = [np.flatnonzero(labels == name) for name in names for _ in range(replicates)]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    matrix = sp.csr_matrix((np.ones(indptr[-1], np.float32), np.concatenate(rows), indptr), shape=(len(rows), len(labels)))
    return Membership(matrix, subsets_per_example=replicates, seed=seed), names


class LabelOperators:
    def __init__(self, stride: "Stride", folder: Path, names: tuple[str, ...], replicates: int):
        self.stride, self.folder, self.labels, self.replicates = stride, folder, names, replicates

    @classmethod
    def fit(cls, stride: "Stride", labels: Sequence[str], replicates: int = 4, steps: int = 200,
            rows_per_operator: int = 8) -> "LabelOperators":
        """Train (or read back) `replicates` operators per label, each on all of the label's examples, on the fitted
        run's model and examples (`labels`: one per training example, in the run's order)."""
        stride._require_fit()
        examples: Examples = stride._examples
        if len(labels) != len(examples):
            raise ConfigError(f"{len(labels)} labels for {len(examples)} training examples: give one label per example")
        if steps < 1 or rows_per_operator < 1:
            raise ConfigError(f"steps and rows_per_operator must be >= 1, got {steps} and {rows_per_operator}")
        membership, names = label_membership(labels, replicates, stride.config.seed)
        config = replace(stride.config, steps=steps, operators_per_step=membership.num_subsets, fidelity_batch=rows_per_operator,
                         full_batch=False, linearity_weight=0.0)
        settings = {"operators": stride._operators_stage.fingerprint, "labels": hashlib.sha1("\n".join(map(str, labels)).encode()).hexdigest(),
                    "replicates": replicates, "steps": steps, "rows_per_operator": rows_per_operator, "seed": config.seed,
                    "stability_weight": config.stability_weight, "stability_batch": config.stability_batch}
        key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        folder = stride.run.path(FOLDER, key)
        if not (folder / "bank.json").exists():
            _train(stride, examples, membership, config, folder, settings, names)
        return cls(stride, folder, names, replicates)

    def responses(self, queries: "Queries | Examples", name: str = "queries") -> LabelResponses:
        """Every query's response to every label operator, grouped by label (kept as responses-<name>-<digest>.npy)."""
        stride = self.stride
        batch, query_ids = stride._query_batch(queries)
        digest = hashlib.sha1(json.dumps(query_ids).encode() + b"".join(
            np.ascontiguousarray(value.cpu().numpy()).tobytes() for _, value in sorted(batch.items()))).hexdigest()[:12]
        path = self.folder / f"responses-{name}-{digest}.npy"
        if path.exists():
            values = np.load(path)
        else:
            values, _ = measure_responses(stride.adapter, self._bank(), batch, stride.config.form, stride.layer,
                                          stride.config.micro_batch, stride.device, stride.progress,
                                          measurement=stride.config.measurement, query_ids=query_ids)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, values)
        per_label = values.reshape(len(query_ids), len(self.labels), self.replicates)
        error = per_label.std(axis=2, ddof=1) / np.sqrt(self.replicates)
        return LabelResponses(self.labels, tuple(query_ids), per_label.mean(axis=2), error, per_label)

    def _bank(self) -> SteeringBank:
        return SteeringBank.from_folder(self.folder).to(self.stride.device).eval()


def _train(stride: "Stride", examples: "Examples", membership: Membership, config, folder: Path, settings: dict,
           names: tuple[str, ...]) -> None:
    partial = folder.with_name(folder.name + ".partial")
    bank, log = stride.train_bank(examples, membership, config, partial / "checkpoints", partial / "states.bin")
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        bank.save(tmp / "bank.safetensors")
        membership.save(tmp / "membership.npz")
        save_file({name: torch.tensor(values, dtype=torch.float32) for name, values in log.curves.items()},
                  str(tmp / "curves.safetensors"))
        (tmp / "settings.json").write_text(json.dumps({**settings, "labels_in_order": list(names)}, indent=1))
        (tmp / "bank.json").write_text(json.dumps({**bank.shape, "form": config.form, "layer": stride.layer}))
    remove_path(partial)
