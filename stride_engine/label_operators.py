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

`held_out` examples of each label (whole documents, drawn at random) are kept out of training, as members and as
stability rows alike: every label's dose is then measured on every label's unseen text too (`held_out_responses`),
which is what a mixture needs to know about the text it is not aimed at (curate's macro guard).

Why the stability term stays on (measured on the reweighting study's run and the demo run, docs/reweight.md): without
it every label's operator drifts and raises every target's loss, which reads as "no domain helps" wherever only the
sign is kept; with it the operator of the target's own domain stands out (Wikipedia for a Wikipedia topic).

    bank = LabelOperators.fit(stride, labels, replicates=4, steps=200, held_out=32)
    responses = bank.responses(queries)        # LabelResponses: per query and label, the mean over replicates
    on_text = bank.held_out_responses()        # the same for every held-out example (on_text.query_ids: their labels)

Kept in the run under label-operators/<fingerprint>/ (the bank, its membership and curves; each query set's responses
beside them), keyed by what they were built from: the run's operators (its model and chunks), the labels, the
settings. A rerun with the same inputs reads them back.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.torch import save_file

from .adapters import select_rows
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


def held_out_examples(labels: Sequence[str], doc_index: np.ndarray, per_label: int, seed: int) -> np.ndarray:
    """Up to `per_label` examples of each label, whole documents drawn at random (an example's document is never split
    between training and held-out text), and never more than a quarter of a label's examples: the rest train its
    operators. Sorted example indices; a label none of whose documents fits under its limit holds out none."""
    labels = np.asarray([str(label) for label in labels])
    rng = np.random.default_rng([seed, 29])
    held = []
    for name in sorted(set(labels)):
        rows = np.flatnonzero(labels == name)
        limit = min(per_label, len(rows) // 4)
        taken: list[int] = []
        for document in rng.permutation(np.unique(doc_index[rows])):
            chunks = rows[doc_index[rows] == document]
            if len(taken) + len(chunks) <= limit:
                taken += chunks.tolist()
        held += taken
    return np.array(sorted(held), dtype=np.int64)


class LabelOperators:
    def __init__(self, stride: "Stride", folder: Path, names: tuple[str, ...], replicates: int, held_out: np.ndarray,
                 held_out_labels: tuple[str, ...]):
        self.stride, self.folder, self.labels, self.replicates = stride, folder, names, replicates
        self.held_out, self.held_out_labels = held_out, held_out_labels

    @classmethod
    def fit(cls, stride: "Stride", labels: Sequence[str], replicates: int = 4, steps: int = 200,
            rows_per_operator: int = 8, held_out: int = 0) -> "LabelOperators":
        """Train (or read back) `replicates` operators per label, each on all of the label's examples but its
        `held_out` ones, on the fitted run's model and examples (`labels`: one per training example, in the run's
        order). The run's own operators are not needed: a run prepared with fit(operators=False) will do."""
        stride._require_examples()
        examples: Examples = stride._examples
        if len(labels) != len(examples):
            raise ConfigError(f"{len(labels)} labels for {len(examples)} training examples: give one label per example")
        if steps < 1 or rows_per_operator < 1:
            raise ConfigError(f"steps and rows_per_operator must be >= 1, got {steps} and {rows_per_operator}")
        if held_out < 0:
            raise ConfigError(f"held_out is a number of examples per label, >= 0, got {held_out}")
        labels = [str(label) for label in labels]
        held = held_out_examples(labels, examples.doc_index, held_out, stride.config.seed) if held_out else np.zeros(0, np.int64)
        training = np.setdiff1d(np.arange(len(examples)), held)
        membership, names = label_membership([labels[i] for i in training], replicates, stride.config.seed)
        config = replace(stride.config, steps=steps, operators_per_step=membership.num_subsets, fidelity_batch=rows_per_operator,
                         full_batch=False, linearity_weight=0.0)
        settings = {"operators": stride._operators_stage.fingerprint, "labels": hashlib.sha1("\n".join(labels).encode()).hexdigest(),
                    "replicates": replicates, "steps": steps, "rows_per_operator": rows_per_operator, "seed": config.seed,
                    "stability_weight": config.stability_weight, "stability_batch": config.stability_batch}
        if held_out:  # absent when zero: banks made before held-out text existed keep their key
            settings["held_out"] = held_out
        key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        folder = stride.run.path(FOLDER, key)
        if not (folder / "bank.json").exists():
            _train(stride, _rows(examples, training), membership, config, folder, settings, names)
        return cls(stride, folder, names, replicates, held, tuple(labels[i] for i in held))

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

    def held_out_responses(self) -> LabelResponses:
        """Every held-out example's response to every label's operators; its `query_ids` are the examples' labels."""
        if not len(self.held_out):
            raise ConfigError("this bank holds no example out of training: fit it with held_out > 0")
        examples = _rows(self.stride._examples, self.held_out)
        measured = self.responses(replace(examples, doc_ids=[f"example-{i}" for i in self.held_out]), name="held-out")
        return replace(measured, query_ids=self.held_out_labels)

    def _bank(self) -> SteeringBank:
        return SteeringBank.from_folder(self.folder).to(self.stride.device).eval()


def _rows(examples: "Examples", rows: np.ndarray) -> "Examples":
    """The examples at `rows` (their documents' ids and domains as they were)."""
    return replace(examples, batch=select_rows(examples.batch, torch.as_tensor(rows)), doc_index=examples.doc_index[rows])


def _train(stride: "Stride", examples: "Examples", membership: Membership, config, folder: Path, settings: dict,
           names: tuple[str, ...]) -> None:
    partial = folder.with_name(folder.name + ".partial")
    started = time.perf_counter()
    bank, log = stride.train_bank(examples, membership, config, partial / "checkpoints", partial / "states.bin")
    settings = {**settings, "train_seconds": round(time.perf_counter() - started, 1)}  # of this process (a resume: its part)
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        bank.save(tmp / "bank.safetensors")
        membership.save(tmp / "membership.npz")
        save_file({name: torch.tensor(values, dtype=torch.float32) for name, values in log.curves.items()},
                  str(tmp / "curves.safetensors"))
        (tmp / "settings.json").write_text(json.dumps({**settings, "labels_in_order": list(names)}, indent=1))
        (tmp / "bank.json").write_text(json.dumps({**bank.shape, "form": config.form, "layer": stride.layer}))
    remove_path(partial)
